"""Concept attribution over SAE features, and selective amplify/suppress. See
configs/concept_attribution.py."""

from landscape import cli
from landscape import concept_attribution

cli.define_flags("configs/concept_attribution.py")


def main(argv):
  cli.run(concept_attribution.run, argv)


if __name__ == "__main__":
  cli.main(main)
