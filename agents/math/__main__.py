from agents.math import MathAgent

raise SystemExit(MathAgent.main())
