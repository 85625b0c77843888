"""Evaluate a Meta-HMR HMR checkpoint with test-time optimisation (seed README commands)."""
from utils.cli import run
from utils.options import parse_eval

if __name__ == "__main__":
    from train.evaluation import main
    run(lambda argv: main(parse_eval("hmr", argv)))   # one-line errors, exit code 2
