"""Results of grids, read from their run folders: summaries, plots, diagnoses and the study report.

One job per module, imports pointing down this list (none imports the engine, torch or pydantic):

    result.py     one run's headline numbers (result.json)      diagnosis.py  a run's failure modes
    runs.py       reading a grid folder's run folders            summary.py    summary.md/csv, plots/
    plots.py      the figures                                    study.py      studies: configs over seeds
    evidence.py   comparisons and the three outcomes             select.py     finding a claim's configs
    claims.py     the nine claims                                setting.py    differences from the post's setting
    render.py     REPORT.md's text                               report.py     write_report
"""
