from agents.narrative import NarrativeAgent

raise SystemExit(NarrativeAgent.main())
