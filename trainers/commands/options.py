"""Flags that several `stepcot` commands share, defined once so that their spelling, defaults and help agree."""

import argparse


def add_evaluation_arguments(parser: argparse.ArgumentParser, seed_help: str = "seed of the bootstrap") -> None:
    """Bootstrap intervals, device and plots of the commands that score a model (eval, baseline, eval-transfer)."""
    parser.add_argument("--num-bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (0: none)")
    parser.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals")
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
