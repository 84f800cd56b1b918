#!/usr/bin/env python3
"""scripts/check_sql.py — the search_path guard that `make test` runs (issue 17): every query the extension runs must
be immune to the caller's search_path, or an overload planted in a schema on that path runs instead of pg_catalog's.

1. SQL (the install scripts and the newest upgrade script): every function and procedure written in SQL or PL/pgSQL
   has exactly `SET search_path = pg_catalog, pg_temp`, except those in QUALIFIED, which cannot have it (a procedure
   that commits) and must instead qualify every function call, operator and type of their own (checked token by
   token), and `BEGIN ATOMIC` bodies, which Postgres resolves when the install script creates them. A body quoted any
   other way, and `ALTER FUNCTION … SET / RESET search_path`, are refused.
2. Rust (src/): SPI is called only from src/pg/spi_util.rs, which checks at run time, on every statement, that the
   search_path is pinned to `pg_catalog, pg_temp` (src/privilege.rs pins it); so every statement the test suites
   reach is checked too.

Exit status 1, with one line per problem, when anything is found.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PINNED = "SET search_path = pg_catalog, pg_temp"
# Routines that cannot pin their search_path; their bodies must be fully qualified.
QUALIFIED = {"nile.for_each_tenant"}
# Words that may be followed by "(" without being a function call of a schema on the search_path: SQL and PL/pgSQL
# syntax, and type names that are grammar keywords (resolved to pg_catalog whatever the search_path).
SYNTAX = {
    "all", "and", "any", "array", "as", "bigint", "bit", "boolean", "case", "cast", "coalesce", "conflict", "do", "else",
    "elsif", "exists", "extract", "filter", "from", "greatest", "if", "in", "integer", "into", "least", "not", "nullif",
    "numeric", "on", "or", "over", "return", "returns", "row", "select", "then", "using", "values", "when", "where",
    "while", "with",
}
OPERATOR_CHARS = set("+-*/<>=~!@#%^&|`?")


def strip_comments_and_strings(body: str) -> str:
    """The body with comments removed and string literals replaced by ''."""
    out, i, n = [], 0, len(body)
    while i < n:
        if body.startswith("--", i):
            j = body.find("\n", i)
            i = n if j < 0 else j
        elif body.startswith("/*", i):
            j = body.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif body[i] == "'":
            j = i + 1
            while j < n:
                if body[j] == "'" and j + 1 < n and body[j + 1] == "'":
                    j += 2
                elif body[j] == "'":
                    break
                else:
                    j += 1
            out.append("''")
            i = j + 1
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def unqualified_in(body: str):
    """Unqualified function calls and bare operators in a routine body."""
    text = re.sub(r"OPERATOR\(pg_catalog\.[^)]*\)", " ", strip_comments_and_strings(body))
    problems = []
    # Function calls: a word followed by "(", not preceded by "." (schema-qualified) and not syntax.
    for m in re.finditer(r"(?<![\w.$])([A-Za-z_][\w$]*)\s*\(", text):
        word = m.group(1).lower()
        if word not in SYNTAX:
            problems.append(f"unqualified call {m.group(1)}(")
    # Operators: runs of operator characters outside OPERATOR(...), except PL/pgSQL's := and named arguments' =>,
    # the * of count(*) / SELECT *, and the = of SET lists, GET DIAGNOSTICS and RAISE ... USING options.
    no_operators = re.sub(r"::", " ", text)
    for m in re.finditer(r"[+\-*/<>=~!@#%^&|`?]+", no_operators):
        op = m.group(0)
        before = no_operators[: m.start()].rstrip()
        after = no_operators[m.end():].lstrip()
        if op in (":=", "=>"):
            continue
        if op == "*" and (before.endswith("(") or re.search(r"\bSELECT$", before, re.I)):
            continue
        if op == "=":
            prev_word = re.search(r"([\w.]+)$", before)
            clause = before[: prev_word.start()].rstrip() if prev_word else before
            # "SET a = …", ", b = …" inside a SET list / GET DIAGNOSTICS list / RAISE USING list.
            if prev_word and (re.search(r"(\bSET|,|\bUSING|\bDIAGNOSTICS)$", clause, re.I)):
                continue
        if op == "-" and re.match(r"\d", after) and re.search(r"[(,=]$", before):
            continue  # a negative literal
        if before.endswith(":") and op.startswith("="):
            continue  # the = of :=
        problems.append(f"bare operator {op}")
    return problems


def routines(sql: str):
    """(qualified name, header, body) of every CREATE [OR REPLACE] FUNCTION / PROCEDURE; body is None when it has no
    dollar-quoted body (LANGUAGE c). The header is what comes before the body, comments removed."""
    for m in re.finditer(r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE)\s+([\w.\"]+)\s*\(", sql, re.I):
        name = m.group(1).replace('"', "")
        rest = sql[m.end():]
        stop = rest.find(";")
        tag = re.search(r"\$(\w*)\$", rest)
        if tag is None or (0 <= stop < tag.start()):
            yield name, strip_comments_and_strings(rest[: stop if stop >= 0 else len(rest)]), None
            continue
        body_end = rest.find(tag.group(0), tag.end())
        yield name, strip_comments_and_strings(rest[: tag.start()]), rest[tag.end(): body_end]


def check_sql_files():
    problems = []
    upgrades = sorted(
        (ROOT / "sql").glob("nile_tenancy--*--*.sql"),
        key=lambda p: [int(x) for x in re.findall(r"\d+", p.name.split("--")[2])],
    )
    files = [p for p in sorted((ROOT / "sql").glob("*.sql")) if not p.name.startswith("nile_tenancy--")]
    files += upgrades[-1:]
    for path in files:
        sql = path.read_text()
        for name, header, body in routines(sql):
            if body is None:
                continue
            where = f"{path.relative_to(ROOT)}: {name}"
            if name in QUALIFIED:
                problems += [f"{where}: {p}" for p in unqualified_in(body)]
            elif not re.search(re.escape(PINNED) + r"(?!\s*,)", " ".join(header.split())):
                problems.append(f"{where}: no `{PINNED}` (exactly)")
        # Routines in SQL or PL/pgSQL with a body that is neither dollar-quoted nor BEGIN ATOMIC (which Postgres parses
        # at CREATE time, in the install script's search_path) escape the checks above.
        for name, header, body in routines(sql):
            if (body is None and re.search(r"LANGUAGE\s+(sql|plpgsql)\b", header, re.I)
                    and not re.search(r"\bBEGIN\s+ATOMIC\b", header, re.I)):
                problems.append(f"{path.relative_to(ROOT)}: {name}: a body that is not dollar-quoted")
        # A search_path changed after the fact.
        for m in re.finditer(r"ALTER\s+(FUNCTION|PROCEDURE|ROUTINE)\s+[^;]*\b(SET|RESET)\s+search_path", sql, re.I):
            problems.append(f"{path.relative_to(ROOT)}: {m.group(0)[:60]}…: changes a routine's search_path")
    return problems


def check_rust_files():
    problems = []
    spi = re.compile(r"\.\s*(select|update|prepare|prepare_mut)\s*\(|Spi::(run|run_with_args|get_one\w*|get_two\w*|"
                     r"get_three\w*|explain|select|update)\b|\bSPI_\w+\s*\(")
    unit_tests = ROOT / "src" / "pg_tests"  # the in-server unit tests, which call SPI directly
    for path in sorted((ROOT / "src").rglob("*.rs")):
        if path.name == "spi_util.rs" or unit_tests in path.parents:
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("//", 1)[0]
            for m in spi.finditer(code):
                if re.search(r"\bmac\s*$", code[: m.start()]):
                    continue  # the HMAC's update (src/tokens.rs)
                problems.append(f"{path.relative_to(ROOT)}:{lineno}: SPI outside src/pg/spi_util.rs: {m.group(0)}")
    return problems


def main():
    problems = check_sql_files() + check_rust_files()
    for p in problems:
        print(p)
    if problems:
        print(f"check_sql: {len(problems)} problem(s): every query must be immune to the caller's search_path "
              f"(see scripts/check_sql.py)", file=sys.stderr)
        return 1
    print("check_sql: every SQL routine pins or qualifies its search_path; SPI runs only through src/pg/spi_util.rs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
