"""`python -m probe`: the same CLI as the `probe` console script."""

from probe.cli import main

if __name__ == "__main__":  # importing the module (tools that walk the package) runs nothing
    raise SystemExit(main())
