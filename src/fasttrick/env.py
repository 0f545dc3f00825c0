"""`python -m fasttrick.env`: what this machine can run (versions, FusedSGDW backends, DALI).

`environment_report()` (fasttrick.environment) returns the same facts as a dict, for run folders and benchmark results.
"""

from __future__ import annotations

from .environment import environment_report


def main() -> None:
    report = environment_report()
    width = max(map(len, report))
    for key, value in report.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        print(f"{key:<{width}}  {shown if shown not in (None, '') else '-'}")


if __name__ == "__main__":
    main()
