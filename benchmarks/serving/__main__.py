from benchmarks.serving.run import main

raise SystemExit(main())
