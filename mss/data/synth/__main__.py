"""``python -m mss.data.synth``: see :func:`mss.data.synth.cli.main`."""

from mss.data.synth.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
