"""`python -m fasttrick.env`: what this machine can run (versions, FusedSGDW backends per device, the
study extra, DALI); the facts come from :func:`fasttrick.environment.environment_report`.
"""

from __future__ import annotations

from .environment import environment_report


def main() -> None:
    report = environment_report()
    width = max(map(len, report))
    for key, value in report.items():
        if isinstance(value, dict):
            print(key)
            for name, detail in value.items():
                print(f"  {name:<{width - 2}}  {detail}")
        else:
            print(f"{key:<{width}}  {value if value not in (None, '') else '-'}")


if __name__ == "__main__":
    main()
