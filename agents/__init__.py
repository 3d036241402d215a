"""Runnable agents. The paper's three evaluation agents (section 5.1): math, narrative and
rec, each sending 2-3 requests to the model; and travel, the paper's running example.

    aios-run agents.math "what is 17 * 23?"
    python -m agents.narrative "a robot learns to paint"     # inside an AIOS_HOME's environment
"""

PAPER_AGENTS = ("math", "narrative", "rec")
TASKS = {
    "math": "What is 17 * 23?",
    "narrative": "A lighthouse keeper finds a message in a bottle.",
    "rec": "I love spicy Thai food and I live in Boston.",
    "travel": "Plan a 2-day trip from New York to Paris.",
}
