"""Steering and in-context learning: measure the exchange rate. See configs/steering_icl.py."""

from landscape import cli
from landscape import steering_icl

cli.define_flags("configs/steering_icl.py")


def main(argv):
  cli.run(steering_icl.run, argv)


if __name__ == "__main__":
  cli.main(main)
