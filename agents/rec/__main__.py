from agents.rec import RecAgent

raise SystemExit(RecAgent.main())
