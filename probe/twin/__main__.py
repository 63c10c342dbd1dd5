"""`python -m probe.twin`: the twin standalone (see probe.twin.main for its options)."""

from probe.twin import main

if __name__ == "__main__":  # importing the module (tools that walk the package) runs nothing
    raise SystemExit(main())
