from include.backup.cli import main

raise SystemExit(main())
