from statsd_gateway.cli import main

raise SystemExit(main())
