"""`python -m benchmark.cli`: the same as the `bench` console script (torchrun relaunches
`bench pretrain` this way)."""

from benchmark.cli import main

main()
