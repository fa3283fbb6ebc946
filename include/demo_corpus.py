"""Write a deterministic, deliberately messy demo corpus into DCTP's landing zone (``landing/{source}/dt=D/``).

A date's files depend only on ``(seed, date, rows_per_day)``, so re-running or extending a date range gives the
same bytes. With a PostgreSQL connection it also (re)creates the ``dctp_demo_articles`` source table.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gzip
import html
import io
import json
import posixpath
import random
import sys
import unicodedata
import zlib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from dctp_tasks.storage import Storage

DEFAULT_TABLE = "dctp_demo_articles"
#: Malformed rows are a fixed handful per day; below this the pipeline's 5 % quarantine limit would trip.
MIN_ROWS_PER_DAY = 200
SHARES = {"web": 0.40, "forum": 0.20, "news": 0.15, "instruct": 0.15, "articles_db": 0.10}
WEB_DOMAINS = ("science", "technology", "health", "finance", "travel")
SHORT_DOMAIN = "travel"
"""The domain the corpus keeps short: three in four of its documents are written for another web domain instead, so
it has about a quarter of the others' rows (``make demo`` grows it with synthetic rows)."""
NEWS_VOCAB = {"world": ("world",), "sports": ("sports",), "business": ("finance",),
              "scitech": ("science", "technology")}
# Shares of derived rows; the rest are fresh clean documents.
TEXT_VARIANTS = {"dup_same_day": .04, "dup_prev_days": .03, "near_dup": .04, "unnormalized": .06, "short": .03,
                 "low_quality": .04, "toxic": .02, "pii": .03, "non_english": .02}
NEWS_VARIANTS = {"dup_same_day": .05, "dup_prev_days": .04, "unnormalized": .04, "no_description": .02}
PAIR_VARIANTS = {"dup_same_day": .05, "dup_prev_days": .04, "pii": .03, "toxic": .02, "short": .03, "non_english": .03}
UNNORMALIZED = ("mojibake", "html", "nfd", "crlf", "spaces", "nbsp", "control")
TRUNCATED_LINES = 8

V = dict  # vocabulary: s=subjects, v=verbs (past), o=objects, t=topics, g=groups
VOCAB: dict[str, dict[str, tuple[str, ...]]] = {
    "science": V(s=("a team of marine biologists", "researchers at a Swiss university", "the new space telescope",
                    "a long-term climate study", "physicists working near Genève",
                    "an international group of geologists"),
                 v=("measured", "identified", "confirmed", "mapped", "observed", "questioned"),
                 o=("unexpected patterns in ocean temperatures", "a previously unknown species of beetle",
                    "the rate at which glaciers are retreating", "faint signals from a distant galaxy",
                    "the role of soil microbes in storing carbon", "the naïve assumptions behind older models"),
                 t=("climate change", "biodiversity", "particle physics", "ocean chemistry", "the early universe"),
                 g=("scientists", "students", "policy makers", "science teachers")),
    "technology": V(s=("a small startup from Berlin", "the open-source community", "engineers at a chip maker",
                       "a popular messaging app", "a team of security researchers", "the city's transport authority"),
                    v=("released", "tested", "announced", "rebuilt", "patched", "demonstrated"),
                    o=("a faster database engine", "an update that fixes a serious security flaw",
                       "a cheaper battery for electric bikes", "résumé screening software built on machine learning",
                       "a tool that translates sign language in real time", "a new generation of low-power chips"),
                    t=("artificial intelligence", "data privacy", "cloud computing", "cybersecurity", "open source"),
                    g=("developers", "users", "IT managers", "small businesses")),
    "health": V(s=("doctors at a regional hospital", "a large nutrition study", "public health officials",
                   "a group of nurses", "researchers in Québec", "the national health service"),
                v=("recommended", "reported", "tracked", "reviewed", "compared", "warned about"),
                o=("the benefits of a daily thirty-minute walk", "rising rates of seasonal flu",
                   "the effect of screen time on children's sleep", "a simple test for early diabetes",
                   "the link between diet and heart disease", "new guidance on vitamin D"),
                t=("mental health", "nutrition", "vaccination", "sleep", "healthy ageing"),
                g=("patients", "parents", "older adults", "family doctors")),
    "finance": V(s=("the central bank", "analysts at a large investment firm", "small business owners",
                    "the finance ministry", "a consumer protection agency", "several regional banks"),
                 v=("raised", "forecast", "cut", "questioned", "reported", "defended"),
                 o=("interest rates by a quarter of a point", "quarterly profits of 2.4 billion €",
                    "the cost of mortgages for first-time buyers", "fees on international transfers",
                    "a plan to simplify the tax code", "growth of about 1.8 percent next year"),
                 t=("inflation", "household savings", "the housing market", "pension reform", "crypto regulation"),
                 g=("investors", "savers", "homeowners", "retirees")),
    "travel": V(s=("budget airlines", "the tourism board", "hotel owners on the coast", "a guide based in Lisbon",
                   "travellers returning from Asia", "the national rail company"),
                v=("promoted", "recommended", "reopened", "reviewed", "rediscovered", "expanded"),
                o=("a quiet café near the old harbour", "day trips from Zürich to the mountains",
                   "the beaches around Málaga", "street food markets in São Paulo",
                   "night trains between European capitals", "a walking route through the vineyards of Provence"),
                t=("sustainable tourism", "travel insurance", "off-season trips", "city breaks", "rail travel"),
                g=("tourists", "backpackers", "families", "business travellers")),
    "sports": V(s=("the home team", "a veteran goalkeeper", "the national federation", "the young sprinter",
                   "both coaches", "the league"),
                v=("won", "lost", "celebrated", "criticised", "announced", "secured"),
                o=("a dramatic final in extra time", "a place in the semi-finals", "a new three-year contract",
                   "a controversial refereeing decision", "the fastest time of the season", "a record crowd"),
                t=("the championship", "player transfers", "the new season", "youth academies", "doping controls"),
                g=("fans", "players", "club owners", "commentators")),
    "world": V(s=("government ministers", "the United Nations", "opposition leaders", "aid agencies",
                  "negotiators from both sides", "the regional parliament"),
               v=("agreed on", "rejected", "debated", "called for", "signed", "postponed"),
               o=("a ceasefire along the border", "new rules on migration", "emergency funding for flood victims",
                  "a trade agreement covering farm goods", "early elections in the spring",
                  "a plan to protect fisheries"),
               t=("diplomacy", "the refugee crisis", "climate talks", "regional security", "trade relations"),
               g=("citizens", "diplomats", "voters", "humanitarian workers")),
}
CONTEXTS = ("over the past decade", "in a study released this week", "after years of careful work",
            "despite a limited budget", "across three continents", "during the winter months", "for the first time")
SENTENCES = (
    "{S} {v} {o} {c}.",
    "According to a report published {w}, {s} {v} {o}.",
    "{C}, {s} {v} {o}.",
    "The news could change how {g} think about {t}.",
    "\"We did not expect to see {o} so soon,\" one of the people involved said.",
    "Critics argue that the debate over {t} is far from settled.",
    "About {n} percent of {g} said {t} mattered to them, {c}.",
    "For now, {g} are advised to follow {t} closely.",
    "Part of the work on {t} was paid for by public R&D grants.",
    "Earlier attempts to deal with {t} produced mixed results.",
    "Many {g} still have questions about {t}, and answers may take time.",
    "{S} also {v} {o2}, which surprised some observers.",
)
PROMPTS = ("Explain {t} to someone with no background in the subject.", "What should {g} know about {t}?",
           "Write a short paragraph about {o}.", "Summarize the main arguments in the debate over {t}.",
           "Give me three practical tips related to {t}.")
NON_ENGLISH = {
    "fr": ("Le marché couvert ouvre tous les samedis dès sept heures du matin.",
           "Les chercheurs ont présenté leurs résultats lors d'une conférence à Lyon.",
           "Nous avons passé une semaine très agréable au bord de la mer.",
           "La banque centrale a décidé de maintenir ses taux d'intérêt.",
           "Il est conseillé de boire beaucoup d'eau pendant les fortes chaleurs.",
           "Cette nouvelle application facilite la gestion des dépenses quotidiennes."),
    "de": ("Die Forscher haben ihre Ergebnisse in einer Fachzeitschrift veröffentlicht.",
           "Wir haben eine Wanderung durch die Alpen in der Nähe von Zürich gemacht.",
           "Die Zentralbank hat die Leitzinsen unverändert gelassen.",
           "Regelmäßige Bewegung senkt das Risiko für Herzkrankheiten deutlich.",
           "Das neue Update verbessert die Akkulaufzeit der meisten Geräte.",
           "Der Zug nach München hatte heute leider wieder Verspätung."),
    "es": ("Los investigadores publicaron sus resultados en una revista científica.",
           "El mercado central abre todos los días a las ocho de la mañana.",
           "Pasamos una semana maravillosa en las playas de Málaga.",
           "El banco central decidió mantener los tipos de interés sin cambios.",
           "Dormir bien es fundamental para la salud mental y física.",
           "La nueva aplicación permite pagar con el teléfono móvil en cualquier tienda."),
}
TOXIC = ("Honestly, you are an idiot if you believe any of this.", "What a stupid article, the author is a moron.",
         "Shut up already, nobody cares about your dumb opinion.", "Only a complete fool would fall for this garbage.")
RANT = ("Every single person who shared this is a pathetic clown.",
        "You people should be ashamed of spreading such worthless trash.",
        "Get lost, you useless loser, and take your idiotic opinions with you.",
        "This is the dumbest thing I have read all year, written by a total imbecile.",
        "Go away, nobody wants to hear from a brainless troll like you.",
        "What a waste of space you are, honestly the most idiotic commenter here.")
PII = ("You can reach me at jane.doe@example.com or call +1 415-555-0134 after six.",
       "Send the invoice to billing@example.org, attention Mark Webber, phone (212) 555-0187.",
       "The login came from 203.0.113.42 and then from 198.51.100.7 a minute later.",
       "My card 4111 1111 1111 1111 (exp 12/28) was charged twice, please refund it.",
       "Please wire the deposit to IBAN GB82 WEST 1234 5698 7654 32 before Friday.")
SHORT = ("Great post, thanks!", "lol", "First!", "+1, same here.", "Nice.", "Bump", "Thanks for sharing this.", "ok")
SPAM = ("BUY NOW!!! Cheap flights, hotels and watches. Click here: http://deals.example.com/offer?id=123 "
        "Limited time!!! ")
KEYWORDS = ("cheap flights", "best hotels", "deals", "discount", "free shipping", "crypto", "weight loss", "casino",
            "loans", "insurance quotes", "top 10", "vpn", "coupon", "sale")
LOREM = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do", "eiusmod",
         "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua")
SWAP_WORDS = ("new", "major", "recent", "local", "several", "notable", "small", "key")
CONTROL = ("\x07", "\x1b", "\x08", "\u200b")
BYLINE = "By {name}, staff writer | {day:%B} {day.day}, {day.year}\n\n"
FOOTER = "\n\nSubscribe to our newsletter for more stories like this. © 2026 Example Media. All rights reserved."
AUTHORS = ("Anna Keller", "Tom Okafor", "Lucía Romero", "Sam Patel")
THREADS = ("Budget travel tips", "Is this study legit?", "Best laptop for students", "Saving for retirement",
           "Sleep and productivity", "Weekend off-topic")

Row = tuple[str, str, str]  # (domain, text, variant)


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _fields(rng: random.Random, vocab: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    f = {k: rng.choice(vocab[k]) for k in ("s", "v", "o", "t", "g")}
    f.update(o2=rng.choice(vocab["o"]), c=rng.choice(CONTEXTS), n=rng.randint(12, 87),
             w=rng.choice(("on Monday", "this week", "last month", "earlier this year")))
    return f | {"S": _cap(f["s"]), "C": _cap(f["c"])}


def _prose(rng: random.Random, vocab_key: str, low: int = 2, high: int = 12) -> str:
    vocab = VOCAB[vocab_key]
    # Each template at most once per document, as in real prose: repeated boilerplate is what quality rules catch.
    templates = rng.sample(SENTENCES, min(rng.randint(low, high), len(SENTENCES)))
    sentences = [template.format(**_fields(rng, vocab)) for template in templates]
    if len(sentences) > 5 and rng.random() < 0.5:  # multi-paragraph docs exercise \n handling (CSV quoting, CRLF)
        cut = rng.randint(2, len(sentences) - 2)
        return " ".join(sentences[:cut]) + "\n\n" + " ".join(sentences[cut:])
    return " ".join(sentences)


# Fresh documents are seeded per (seed, date, kind, index), so a later date can re-create an earlier date's
# document for a cross-day duplicate without generating that whole day.
def _doc(seed: int, day: dt.date, i: int) -> tuple[str, str]:
    rng = random.Random(f"{seed}/{day}/doc/{i}")
    domain = _web_domain(rng, f"{seed}/{day}/doc/{i}")
    return domain, _prose(rng, domain, 4, 12)  # four sentences or more: Gopher's 50-word floor for web pages


def _web_domain(rng: random.Random, key: str) -> str:
    """Draw a web domain; ``SHORT_DOMAIN`` keeps one draw in four (a hash of ``key`` decides, leaving ``rng``'s
    stream, and so every other document, as it was)."""
    domain = rng.choice(WEB_DOMAINS)
    others = [d for d in WEB_DOMAINS if d != SHORT_DOMAIN]
    bucket = zlib.crc32(key.encode()) % 4
    return domain if domain != SHORT_DOMAIN or bucket == 0 else others[bucket % len(others)]


def _article(seed: int, day: dt.date, i: int) -> tuple[str, str, str | None]:
    rng = random.Random(f"{seed}/{day}/news/{i}")
    category = rng.choice(tuple(NEWS_VOCAB))
    f = _fields(rng, VOCAB[rng.choice(NEWS_VOCAB[category])])
    return category, f"{f['S']} {f['v']} {f['o']}", _prose(rng, rng.choice(NEWS_VOCAB[category]), 3, 6)


def _pair(seed: int, day: dt.date, i: int) -> tuple[str, str]:
    rng = random.Random(f"{seed}/{day}/pair/{i}")
    domain = _web_domain(rng, f"{seed}/{day}/pair/{i}")
    prompt = rng.choice(PROMPTS).format(**_fields(rng, VOCAB[domain]))
    if prompt.startswith("Give me three"):
        return prompt, "\n".join(f"{k}. {_prose(rng, domain, 1, 1)}" for k in (1, 2, 3))
    return prompt, _prose(rng, domain, 2, 7)


def _counts(n: int, shares: dict[str, float]) -> dict[str, int]:
    return {kind: max(1, round(n * share)) for kind, share in shares.items()}


def _previous_day(rng: random.Random, day: dt.date) -> dt.date:
    return day - dt.timedelta(days=1 if rng.random() < 0.7 else 2)


def _split_spaces(rng: random.Random, text: str, replace: Any) -> str:
    words = text.split(" ")
    seps = [" "] * (len(words) - 1)
    for pos in rng.sample(range(len(seps)), k=min(3, len(seps))):
        seps[pos] = replace()
    return words[0] + "".join(sep + word for sep, word in zip(seps, words[1:]))


def _unnormalize(rng: random.Random, text: str, style: str) -> str:
    """Return ``text`` damaged so that Unicode/HTML/whitespace normalization restores it exactly."""
    if style == "mojibake":
        try:
            return text.encode("utf-8").decode("cp1252")
        except UnicodeDecodeError:
            return text.encode("utf-8").decode("latin-1")
    if style == "html":
        return html.escape(text)
    if style == "nfd":
        return unicodedata.normalize("NFD", text)
    if style == "crlf":
        return text.replace("\n", "\r\n")
    if style == "spaces":
        return _split_spaces(rng, text, lambda: " " * rng.randint(2, 5))
    if style == "nbsp":
        return _split_spaces(rng, text, lambda: "\u00a0")
    return _split_spaces(rng, text, lambda: " " + rng.choice(CONTROL))  # control characters


def _near_duplicate(rng: random.Random, text: str, day: dt.date, j: int) -> str:
    style = j % 4
    if style == 0:
        words = text.split(" ")
        for pos in rng.sample(range(len(words)), k=min(3, len(words))):
            words[pos] = rng.choice(SWAP_WORDS)
        return " ".join(words)
    if style == 1:
        return BYLINE.format(name=rng.choice(AUTHORS), day=day) + text
    return text + FOOTER if style == 2 else text.lower()


def _low_quality(rng: random.Random, j: int) -> str:
    style = j % 4
    if style == 0:
        return SPAM * rng.randint(4, 9)
    if style == 1:
        return ", ".join(rng.choices(KEYWORDS, k=rng.randint(20, 45)))
    if style == 2:
        return _prose(rng, rng.choice(WEB_DOMAINS), 2, 5).upper() + " !!!"
    return _cap(" ".join(rng.choices(LOREM, k=rng.randint(40, 120)))) + "."


def _non_english(rng: random.Random, j: int) -> str:
    return " ".join(rng.sample(NON_ENGLISH[("fr", "de", "es")[j % 3]], rng.randint(3, 5)))


def _text_rows(seed: int, day: dt.date, n: int) -> list[Row]:
    """Plan the day's web, forum and database rows: fresh docs plus every kind of derived mess."""
    rng = random.Random(f"{seed}/{day}/text-plan")
    counts = _counts(n, TEXT_VARIANTS)
    n_base = n - sum(counts.values())
    base = [_doc(seed, day, i) for i in range(n_base)]
    # Docs that each damage can actually change, so every "unnormalized" row differs from its clean twin.
    pools = {s: [b for b in base if _unnormalize(random.Random(0), b[1], s) != b[1]] or base for s in UNNORMALIZED}
    rows: list[Row] = [(dom, text, "clean") for dom, text in base]
    for kind, count in counts.items():
        for j in range(count):
            dom = rng.choice(WEB_DOMAINS)
            if kind == "dup_same_day":
                dom, text = rng.choice(base)
            elif kind == "dup_prev_days":
                dom, text = _doc(seed, _previous_day(rng, day), rng.randrange(n_base))
            elif kind == "near_dup":
                dom, text = rng.choice(base)
                text = _near_duplicate(rng, text, day, j)
            elif kind == "unnormalized":
                style = UNNORMALIZED[j % len(UNNORMALIZED)]
                dom, text = rng.choice(pools[style])
                text = _unnormalize(rng, text, style)
            elif kind == "short":
                text = rng.choice(SHORT)
            elif kind == "low_quality":
                text = _low_quality(rng, j)
            elif kind == "toxic":  # a whole comment of abuse, long enough to pass the page-shape rules
                text = " ".join(rng.sample(TOXIC, 2) + rng.sample(RANT, 4))
            elif kind == "pii":
                text = _prose(rng, dom, 2, 6) + " " + rng.choice(PII)
            else:
                text = _non_english(rng, j)
            rows.append((dom, text, kind))
    rng.shuffle(rows)  # spreads duplicates across web, forum and the database table
    return rows


def _stamp(rng: random.Random, day: dt.date) -> dt.datetime:
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    return start + dt.timedelta(seconds=rng.randrange(86_400))


def _iso(ts: dt.datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def _jsonl(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def _truncated_gzip(complete: bytes, partial: bytes) -> bytes:
    """Return a gzip stream that decodes ``complete`` + ``partial`` and then stops without its end marker."""
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)
    # Sync flushes make every byte written so far decodable; omitting the final flush leaves no trailer.
    return comp.compress(complete) + comp.flush(zlib.Z_SYNC_FLUSH) + comp.compress(partial) + comp.flush(
        zlib.Z_SYNC_FLUSH)


def _has_broken_files(day: dt.date) -> bool:
    # One date in every three (by calendar, not by position in the request) carries the empty and truncated files.
    return day.toordinal() % 3 == dt.date(2026, 1, 2).toordinal() % 3


def _web_files(seed: int, rng: random.Random, day: dt.date, rows: list[Row]) -> tuple[dict[str, bytes], int, int]:
    tag = f"{day:%Y%m%d}"

    def record(key: str, dom: str, text: Any) -> bytes:
        rec = {"id": key, "url": f"https://{dom}.example.com/a/{key}", "text": text, "domain": dom,
               "created_at": _iso(_stamp(rng, day))}
        return json.dumps(rec, ensure_ascii=False).encode("utf-8")

    lines = [record(f"w{tag}-{k:05d}", dom, text) for k, (dom, text, _) in enumerate(rows)]
    half = len(lines) // 2
    first = lines[:half]
    malformed = [
        b'{"id": "w' + tag.encode() + b'-bad-1", "text": "This record was cut off in the middle of',
        b'{"id": "w' + tag.encode() + b'-bad-2", "text": "caf\xe9 au lait \xff\xfe is not UTF-8", "domain": "travel"}',
        json.dumps({"id": f"w{tag}-bad-3", "domain": "science", "created_at": _iso(_stamp(rng, day))}).encode(),
        json.dumps({"id": f"w{tag}-bad-4", "text": 12345, "domain": "finance"}).encode(),
        json.dumps({"id": [f"w{tag}-bad-5a", f"w{tag}-bad-5b"], "text": _doc(seed, day, 0)[1]}).encode(),
    ]
    for line in malformed:
        first.insert(rng.randrange(len(first) + 1), line)
    files = {"part-0.jsonl": _jsonl(first), "part-1.jsonl.gz": gzip.compress(_jsonl(lines[half:]), mtime=0)}
    written, bad = len(lines), len(malformed)
    if _has_broken_files(day):
        files["empty.jsonl"] = b""
        tail = [record(f"w{tag}-t{k:03d}", *_doc(seed, day, 10_000_000 + k)) for k in range(TRUNCATED_LINES + 1)]
        files["part-2.jsonl.gz"] = _truncated_gzip(_jsonl(tail[:-1]), tail[-1][: len(tail[-1]) // 2])
        written, bad = written + TRUNCATED_LINES, bad + 1  # the cut-off last line is the malformed one
    return files, written, bad


def _forum_file(rng: random.Random, day: dt.date, rows: list[Row]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(["comment_id", "comment_text", "posted_at", "thread"])
    bad_at = rng.randrange(len(rows))
    for k, (_, text, _) in enumerate(rows):
        if k == bad_at:
            buf.write(f'c{day:%Y%m%d}-bad,"this row has only two fields"\r\n')
        writer.writerow([f"c{day:%Y%m%d}-{k:05d}", text, _iso(_stamp(rng, day)), rng.choice(THREADS)])
    return buf.getvalue().encode("utf-8")


def _news_file(seed: int, day: dt.date, n: int) -> tuple[bytes, Counter]:
    rng = random.Random(f"{seed}/{day}/news-plan")
    counts = _counts(n, NEWS_VARIANTS)
    n_base = n - sum(counts.values())
    base = [_article(seed, day, i) for i in range(n_base)]
    rows = [(*a, "clean") for a in base]
    for kind, count in counts.items():
        for _ in range(count):
            cat, title, desc = rng.choice(base)
            if kind == "dup_prev_days":  # syndicated stories come back a day or two later under a new id
                cat, title, desc = _article(seed, _previous_day(rng, day), rng.randrange(n_base))
            elif kind == "unnormalized":
                title, desc = html.escape(title), html.escape(desc).replace(" ", "&nbsp;", 1)
            elif kind == "no_description":
                desc = None
            rows.append((cat, title, desc, kind))
    rng.shuffle(rows)
    table = pa.table({
        "article_id": pa.array([int(f"{day:%Y%m%d}") * 100_000 + k for k in range(len(rows))], pa.int64()),
        "title": pa.array([r[1] for r in rows], pa.string()),
        "description": pa.array([r[2] for r in rows], pa.string()),
        "category": pa.array([r[0] for r in rows], pa.string()),
        "published": pa.array([_stamp(rng, day) for _ in rows], pa.timestamp("us", tz="UTC")),
    })
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue(), Counter(r[3] for r in rows)


def _instruct_file(seed: int, day: dt.date, n: int) -> tuple[bytes, Counter]:
    rng = random.Random(f"{seed}/{day}/pair-plan")
    counts = _counts(n, PAIR_VARIANTS)
    n_base = n - sum(counts.values())
    base = [_pair(seed, day, i) for i in range(n_base)]
    rows = [(*p, "clean") for p in base]
    for kind, count in counts.items():
        for j in range(count):
            prompt, response = rng.choice(base)
            if kind == "dup_prev_days":
                prompt, response = _pair(seed, _previous_day(rng, day), rng.randrange(n_base))
            elif kind in ("pii", "toxic"):
                response = f"{response} {rng.choice(PII if kind == 'pii' else TOXIC)}"
            elif kind == "short":
                response = rng.choice(("Yes.", "No idea.", "See above."))
            elif kind == "non_english":
                prompt, response = "Réponds en une phrase, s'il te plaît.", _non_english(rng, j)
            rows.append((prompt, response, kind))
    rng.shuffle(rows)
    lines = [json.dumps({"uid": f"i{day:%Y%m%d}-{k:05d}", "prompt": p, "response": r,
                         "created_at": _iso(_stamp(rng, day))}, ensure_ascii=False).encode("utf-8")
             for k, (p, r, _) in enumerate(rows)]
    lines.insert(rng.randrange(len(lines) + 1), b'{"uid": "i-bad-1", "prompt": "Explain the water cycle", "respo')
    return _jsonl(lines), Counter(r[2] for r in rows)


def _write_exact(storage: Storage, path: str, data: bytes) -> None:
    # Not Storage.write_bytes: pyarrow's default compression="detect" would gzip the already gzipped ".gz" bytes
    # (and could never write a truncated stream).
    storage.fs.create_dir(posixpath.dirname(path), recursive=True)
    with storage.fs.open_output_stream(path, compression=None) as stream:
        stream.write(data)


def _write_postgres(conn: Any, table: str, rows: list[tuple[str, str, str, dt.datetime]]) -> None:
    from psycopg2 import sql
    from psycopg2.extras import execute_values

    name = sql.Identifier(*table.split("."))
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
        cur.execute(sql.SQL("CREATE TABLE {} (id text PRIMARY KEY, body text, topic text, published_at timestamptz)")
                    .format(name))
        execute_values(cur, sql.SQL("INSERT INTO {} (id, body, topic, published_at) VALUES %s").format(name).as_string(
            cur), rows, page_size=1000)
    conn.commit()


def _outside_rows(seed: int, days: list[dt.date]) -> list[tuple[str, str, str, dt.datetime]]:
    """Rows just outside the requested dates: the pipeline's [D, D+1) window must leave them out."""
    first = dt.datetime.combine(days[0], dt.time(), dt.UTC)
    after = dt.datetime.combine(days[-1], dt.time(), dt.UTC) + dt.timedelta(days=1)
    stamps = (first - dt.timedelta(seconds=1), first - dt.timedelta(days=3), after, after + dt.timedelta(days=4))
    rows = []
    for k, ts in enumerate(stamps):
        topic, body = _doc(seed, ts.date(), 20_000_000 + k)
        rows.append((f"db-outside-{k}", body, topic, ts))
    return rows


def generate(storage: Storage, dates: list[str], seed: int = 7, rows_per_day: int = 600, pg_conn: Any = None,
             table: str = DEFAULT_TABLE) -> dict:
    """Write the landing files for ``dates`` (and the database table when ``pg_conn`` is given); return a summary."""
    if rows_per_day < MIN_ROWS_PER_DAY:
        raise ValueError(f"rows_per_day={rows_per_day} is below {MIN_ROWS_PER_DAY}: the fixed malformed rows would "
                         f"exceed the pipeline's 5 % quarantine limit")
    try:
        days = sorted({dt.date.fromisoformat(d) for d in dates})
    except ValueError as exc:
        raise ValueError(f"dates must be YYYY-MM-DD, got {dates!r}") from exc
    if not days:
        raise ValueError("no dates given")
    n = {source: max(1, round(share * rows_per_day)) for source, share in SHARES.items()}
    summary: dict[str, Any] = {"root": storage.root, "seed": seed, "rows_per_day": rows_per_day, "dates": {}}
    db_rows: list[tuple[str, str, str, dt.datetime]] = []
    for day in days:
        rng = random.Random(f"{seed}/{day}/layout")
        text_rows = _text_rows(seed, day, n["web"] + n["forum"] + n["articles_db"])
        web, forum, db = (text_rows[:n["web"]], text_rows[n["web"]:n["web"] + n["forum"]],
                          text_rows[n["web"] + n["forum"]:])
        web_files, web_rows, web_bad = _web_files(seed, rng, day, web)
        news_bytes, news_variants = _news_file(seed, day, n["news"])
        pairs_bytes, pair_variants = _instruct_file(seed, day, n["instruct"])
        files = {"web": web_files, "forum": {"comments.csv": _forum_file(rng, day, forum)},
                 "news": {"articles.parquet": news_bytes}, "instruct": {"pairs.jsonl": pairs_bytes}}
        day_summary = {
            "web": {"rows": web_rows, "malformed": web_bad, "variants": Counter(r[2] for r in web)},
            "forum": {"rows": len(forum), "malformed": 1, "variants": Counter(r[2] for r in forum)},
            "news": {"rows": sum(news_variants.values()), "malformed": 0, "variants": news_variants},
            "instruct": {"rows": sum(pair_variants.values()), "malformed": 1, "variants": pair_variants},
        }
        for source, named in files.items():
            storage.delete_dir("landing", source, f"dt={day}")  # a re-run leaves exactly this date's files
            for name, data in named.items():
                _write_exact(storage, storage.path("landing", source, f"dt={day}", name), data)
            day_summary[source]["files"] = [f"landing/{source}/dt={day}/{name}" for name in sorted(named)]
        if pg_conn is not None:
            db_rows += [(f"db-{day:%Y%m%d}-{k:05d}", text, dom, _stamp(rng, day))
                        for k, (dom, text, _) in enumerate(db)]
            day_summary["articles_db"] = {"rows": len(db), "malformed": 0, "variants": Counter(r[2] for r in db),
                                          "table": table}
        for entry in day_summary.values():
            entry["variants"] = dict(sorted(entry["variants"].items()))
        summary["dates"][str(day)] = day_summary
    if pg_conn is not None:
        outside = _outside_rows(seed, days)
        _write_postgres(pg_conn, table, db_rows + outside)
        summary["postgres"] = {"table": table, "rows": len(db_rows) + len(outside), "outside_dates": len(outside)}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="data root: file:///abs/dir or s3://bucket/prefix")
    parser.add_argument("--dates", nargs="+", required=True, metavar="YYYY-MM-DD")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rows-per-day", type=int, default=600)
    parser.add_argument("--pg-dsn", help="also (re)create the source table in this PostgreSQL database")
    parser.add_argument("--table", default=DEFAULT_TABLE, help="table name, optionally schema-qualified")
    args = parser.parse_args(argv)
    # Run as a script from a checkout, the repo root is not on sys.path yet.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from dctp_tasks.storage import Storage

    conn = None
    if args.pg_dsn:
        import psycopg2

        conn = psycopg2.connect(args.pg_dsn)
    try:
        summary = generate(Storage(args.root), args.dates, seed=args.seed, rows_per_day=args.rows_per_day,
                           pg_conn=conn, table=args.table)
    finally:
        if conn is not None:
            conn.close()
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
