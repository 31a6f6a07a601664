"""`python -m resnet_serve COMMAND ...`: the same program as the `resnet-serve` script."""

from resnet_serve.cli.main import main

raise SystemExit(main())
