from frugal.devkit.sessions.media import main

raise SystemExit(main())
