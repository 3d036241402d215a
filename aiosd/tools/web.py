"""Search and reference tools of Table 1: real clients of the real services. Base URLs can
be pointed elsewhere (`[tools.NAME] url` or AIOS_TOOL_URL_<NAME>), which is how the tests
run them against a loopback server that answers like the service."""

from __future__ import annotations

import urllib.parse
import xml.etree.ElementTree as ET

from aiosd.errors import AiosError
from aiosd.tools.net import get_json, http_get, need_env
from aiosd.tools.registry import Tool, ToolContext


def _q(args: dict) -> str:
    return str(args["query"]).strip()


def _n(args: dict, default: int = 3) -> int:
    return int(args.get("max_results", default))


def wikipedia_query(args: dict, ctx: ToolContext) -> dict:
    base = ctx.base_url("https://en.wikipedia.org")
    q = urllib.parse.urlencode({"action": "query", "format": "json", "generator": "search",
                                "gsrsearch": _q(args), "gsrlimit": _n(args), "prop": "extracts",
                                "exintro": 1, "explaintext": 1, "exlimit": _n(args), "redirects": 1})
    data = get_json(f"{base}/w/api.php?{q}", "Wikipedia", ctx)
    pages = sorted((data.get("query") or {}).get("pages", {}).values(), key=lambda p: p.get("index", 0))
    hits = [{"title": p.get("title", ""), "extract": (p.get("extract") or "")[:2000],
             "url": f"https://en.wikipedia.org/wiki/{urllib.parse.quote(p.get('title', '').replace(' ', '_'))}"}
            for p in pages]
    return {"query": _q(args), "results": hits, "source": "Wikipedia"}


ATOM = {"a": "http://www.w3.org/2005/Atom"}


def arxiv_search(args: dict, ctx: ToolContext) -> dict:
    base = ctx.base_url("http://export.arxiv.org")
    q = urllib.parse.urlencode({"search_query": f"all:{_q(args)}", "start": 0, "max_results": _n(args)})
    raw = http_get(f"{base}/api/query?{q}", "arXiv", ctx)
    try:
        root = ET.fromstring(raw)
    except ET.ParseError:
        raise AiosError("EUNAVAIL", "arXiv answered something that is not Atom XML") from None
    papers = []
    for e in root.findall("a:entry", ATOM):
        def text(tag: str, node: ET.Element = e) -> str:
            return " ".join((node.findtext(tag, "", ATOM) or "").split())
        papers.append({"id": text("a:id"), "title": text("a:title"), "summary": text("a:summary")[:1500],
                       "published": text("a:published"),
                       "authors": [" ".join((a.findtext("a:name", "", ATOM) or "").split())
                                   for a in e.findall("a:author", ATOM)]})
    return {"query": _q(args), "results": papers, "source": "arXiv"}


def words_api(args: dict, ctx: ToolContext) -> dict:
    (key,) = need_env("WordsAPI", "WORDSAPI_KEY")
    base = ctx.base_url("https://wordsapiv1.p.rapidapi.com")
    word = str(args["word"]).strip()
    data = get_json(f"{base}/words/{urllib.parse.quote(word)}", "WordsAPI", ctx,
                    {"X-RapidAPI-Key": key, "X-RapidAPI-Host": "wordsapiv1.p.rapidapi.com"})
    senses = [{"definition": r.get("definition", ""), "part_of_speech": r.get("partOfSpeech"),
               "synonyms": r.get("synonyms", [])[:8]} for r in (data.get("results") or [])[:8]]
    return {"word": data.get("word", word), "senses": senses,
            "pronunciation": data.get("pronunciation"), "source": "WordsAPI"}


def urban_dictionary(args: dict, ctx: ToolContext) -> dict:
    base = ctx.base_url("https://api.urbandictionary.com")
    term = str(args["term"]).strip()
    data = get_json(f"{base}/v0/define?{urllib.parse.urlencode({'term': term})}", "Urban Dictionary", ctx)
    defs = [{"definition": d.get("definition", "")[:1000], "example": d.get("example", "")[:500],
             "thumbs_up": d.get("thumbs_up", 0)} for d in (data.get("list") or [])[:_n(args)]]
    return {"term": term, "definitions": defs, "source": "Urban Dictionary"}


def google_search(args: dict, ctx: ToolContext) -> dict:
    key, cx = need_env("Google Custom Search", "GOOGLE_API_KEY", "GOOGLE_CSE_ID")
    base = ctx.base_url("https://www.googleapis.com")
    q = urllib.parse.urlencode({"key": key, "cx": cx, "q": _q(args), "num": min(_n(args, 5), 10)})
    data = get_json(f"{base}/customsearch/v1?{q}", "Google Custom Search", ctx)
    hits = [{"title": i.get("title", ""), "url": i.get("link", ""), "snippet": i.get("snippet", "")}
            for i in data.get("items") or []]
    return {"query": _q(args), "results": hits, "source": "Google"}


def bing_search(args: dict, ctx: ToolContext) -> dict:
    (key,) = need_env("Bing Web Search", "BING_SUBSCRIPTION_KEY")
    base = ctx.base_url("https://api.bing.microsoft.com")
    q = urllib.parse.urlencode({"q": _q(args), "count": _n(args, 5)})
    data = get_json(f"{base}/v7.0/search?{q}", "Bing Web Search", ctx, {"Ocp-Apim-Subscription-Key": key})
    hits = [{"title": v.get("name", ""), "url": v.get("url", ""), "snippet": v.get("snippet", "")}
            for v in (data.get("webPages") or {}).get("value", [])]
    return {"query": _q(args), "results": hits, "source": "Bing"}


def _schema(field: str, doc: str, with_n: bool = True) -> dict:
    props: dict = {field: {"type": "string", "description": doc}}
    if with_n:
        props["max_results"] = {"type": "integer", "minimum": 1, "maximum": 20}
    return {"type": "object", "properties": props, "required": [field], "additionalProperties": False}


def _net(name: str, doc: str, fn, field: str = "query", fdoc: str = "what to search for",
         env: tuple = (), with_n: bool = True) -> Tool:
    category = "search" if name in ("google_search", "bing_search") else "database query"
    return Tool(name, doc, _schema(field, fdoc, with_n), fn, category=category, network=True,
                cpu_s=10, memory=1 << 30, env=env)


TOOLS = [
    _net("wikipedia_query", "Search English Wikipedia; returns the intro of the best-matching articles.",
         wikipedia_query),
    _net("arxiv_search", "Search arXiv papers: titles, authors, abstracts.", arxiv_search),
    _net("words_api", "Definitions, parts of speech and synonyms of an English word (WordsAPI).",
         words_api, "word", "the word", ("WORDSAPI_KEY",), with_n=False),
    _net("urban_dictionary", "Slang definitions from Urban Dictionary.", urban_dictionary, "term",
         "the slang term"),
    _net("google_search", "Web search with Google Custom Search.", google_search,
         env=("GOOGLE_API_KEY", "GOOGLE_CSE_ID")),
    _net("bing_search", "Web search with Bing.", bing_search, env=("BING_SUBSCRIPTION_KEY",)),
]
