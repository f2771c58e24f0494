"""Serve a trained experiment on the CPU: a web page to grade a fundus photograph, and a JSON API.

The same as ``retinopathy serve``; --help lists the options."""

from retinopathy import cli
from retinopathy.commands.serve import main

if __name__ == "__main__":
    cli.run(main)
