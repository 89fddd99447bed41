from glassgpt.cli import main

raise SystemExit(main())
