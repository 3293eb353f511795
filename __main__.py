from dsport.core.cli import main

raise SystemExit(main())
