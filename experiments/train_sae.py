"""Train sparse autoencoders (many in one program). See configs/train_sae.py."""

from landscape import cli
from landscape import train_sae

cli.define_flags("configs/train_sae.py")


def main(argv):
  cli.run(train_sae.run, argv)


if __name__ == "__main__":
  cli.main(main)
