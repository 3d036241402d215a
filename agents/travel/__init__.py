"""The paper's running example: a travel agent (flight + weather + plan).

It finds flights and the weather for the trip, converts the fare into the destination's
currency, and has the model write the day-by-day plan. Flights and weather come from the
`flight_search` and `weather` tools when the daemon serves them; this machine has no such
service, so by default they come from a small offline table bundled here, and the answer
says so. The currency conversion uses the `currency_converter` tool (offline ECB rates),
falling back to the currencyconverter package directly if the tool is not served.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from libaios.agent import Agent, Manifest
from libaios.errors import AiosError

# offline stand-ins: typical fares (USD) and climate normals, for the demo only
FLIGHTS = {("new york", "paris"): ("AF 7", 640), ("new york", "london"): ("BA 178", 590),
           ("new york", "tokyo"): ("JL 5", 1250), ("boston", "paris"): ("AF 333", 610),
           ("san francisco", "tokyo"): ("UA 837", 980), ("boston", "london"): ("BA 238", 560)}
WEATHER = {"paris": "mild, 15-22 °C, light rain possible", "london": "cool, 12-19 °C, showers",
           "tokyo": "warm, 20-27 °C, humid", "new york": "18-26 °C, sunny", "boston": "14-23 °C, breezy"}
CURRENCY = {"paris": "EUR", "london": "GBP", "tokyo": "JPY", "new york": "USD", "boston": "USD",
            "san francisco": "USD"}


def cities(task: str) -> tuple[str, str]:
    low = task.lower()
    m = re.search(r"from ([a-z ]+?) to ([a-z ]+?)(?:[.,!?]|$| for| in| on)", low)
    if m:
        return m.group(1).strip(), m.group(2).strip()
    found = [c for c in CURRENCY if c in low]
    return (found[0], found[1]) if len(found) > 1 else ("new york", found[0] if found else "paris")


class TravelAgent(Agent):
    manifest = Manifest(name="travel", description="plans trips: flights, weather, a day-by-day plan",
                        tools=["flight_search", "weather", "currency_converter"], max_tokens=96)

    def lookup(self, tool: str, args: dict, offline: Any) -> tuple[Any, str]:
        try:
            return self.tool(tool, args, timeout=10), f"{tool} tool"
        except AiosError as exc:
            print(f"travel: {tool} unavailable ({exc.code}); using the bundled offline table", file=sys.stderr)
            return offline, "offline table (the real service is unreachable)"

    def convert(self, amount: float, to: str) -> str:
        if to == "USD":
            return f"{amount:.0f} USD"
        try:
            out = self.tool("currency_converter", {"amount": amount, "from": "USD", "to": to}, timeout=10)
            value = out.get("result", out.get("amount")) if isinstance(out, dict) else out
            return f"{float(value):.0f} {to} (currency_converter tool)"
        except (AiosError, TypeError, ValueError):
            try:
                from currency_converter import CurrencyConverter
                return f"{CurrencyConverter().convert(amount, 'USD', to):.0f} {to} (ECB rates, offline)"
            except Exception as exc:  # noqa: BLE001 - the package's data may be missing
                return f"? {to} (no conversion: {exc})"

    def run(self, task: str) -> str:
        origin, dest = cities(task)
        flight, f_src = self.lookup("flight_search", {"origin": origin, "destination": dest},
                                    FLIGHTS.get((origin, dest), ("a direct flight", 700)))
        weather, w_src = self.lookup("weather", {"city": dest}, WEATHER.get(dest, "unknown"))
        code, fare = flight if isinstance(flight, (list, tuple)) else (flight, 700)
        price = self.convert(float(fare), CURRENCY.get(dest, "USD"))
        facts = (f"Flight {origin.title()} → {dest.title()}: {code}, "
                 f"{fare} USD = {price} [{f_src}]\nWeather in {dest.title()}: {weather} [{w_src}]")
        self.log("facts gathered")
        plan = self.chat([
            {"role": "system", "content": "You are a travel planner. Write a short numbered day-by-day plan."},
            {"role": "user", "content": f"Trip: {task}\nFacts:\n{facts}\nWrite the plan."},
        ])
        self.log("plan written")
        return f"{facts}\n\n{plan.strip()}"

    @classmethod
    def default_task(cls) -> str:
        return "Plan a 2-day trip from New York to Paris."
