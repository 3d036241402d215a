from agents.travel import TravelAgent

raise SystemExit(TravelAgent.main())
