"""A custom gymbox environment written from scratch: questions about a shop's SQLite database.

Each episode builds a small database from its seed inside the episode's sandbox; the agent
answers a question about it with an ``sql`` tool that runs read-only queries there. The gold
answer comes from the same rows, queried on the host.

Run it to play it yourself (needs a Docker engine and the sandbox image, `gymbox image build`)::

    python examples/sql_env.py            # type tool calls, end each turn with a line "."

Use it from code::

    import gymnasium, examples.sql_env    # registers "examples/ShopSQL-v0"
    env = gymnasium.make("examples/ShopSQL-v0")
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys

import gymnasium
import numpy as np

from gymbox.envs import InvalidOption, Task, ToolEnv, ToolError, play, tool
from gymbox.rewards.gold import NumericMatch
from gymbox.runtime import SandboxAPI

DATABASE = "shop.db"
QUERY_TIMEOUT_S = 10.0
MAX_ROWS = 50

SCHEMA = """
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL);
CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price_cents INTEGER NOT NULL);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id),
                     product_id INTEGER REFERENCES products(id), quantity INTEGER NOT NULL);
"""

# Runs inside the sandbox: the query arrives as argv[1], so no quoting can break it.
_RUN_QUERY = f"""
import json, sqlite3, sys
db = sqlite3.connect("file:{DATABASE}?mode=ro", uri=True)
try:
    cursor = db.execute(sys.argv[1])
except sqlite3.Error as exc:
    sys.exit(f"SQL error: {{exc}}")
names = [d[0] for d in cursor.description or []]
rows = cursor.fetchmany({MAX_ROWS + 1})
print(json.dumps({{"columns": names, "rows": rows}}))
"""

_CUSTOMERS = ("Ada", "Ben", "Chloe", "Dev", "Elif", "Femi", "Gus", "Hana", "Ivo", "Jun")
_CITIES = ("Lyon", "Oslo", "Pune", "Quito")
_PRODUCTS = ("kettle", "lamp", "mug", "notebook", "pen", "teapot")


@tool
async def sql(query: str, *, sandbox: SandboxAPI) -> str:
    """Run one read-only SQL query on the shop database (SQLite) and return the rows.

    Tables: customers(id, name, city), products(id, name, price_cents),
    orders(id, customer_id, product_id, quantity).

    Args:
        query: a single SELECT statement, e.g. "SELECT name FROM customers WHERE city = 'Oslo'".
    """
    result = await sandbox.exec(["python3", "-c", _RUN_QUERY, query], timeout=QUERY_TIMEOUT_S)
    if result.timed_out:
        raise ToolError(f"the query ran longer than {QUERY_TIMEOUT_S:g} seconds")
    if not result.ok:
        raise ToolError(result.stderr.strip() or f"the query failed (exit {result.exit_code})")
    table = json.loads(result.stdout)
    lines = [" | ".join(table["columns"])]
    lines += [" | ".join(str(value) for value in row) for row in table["rows"][:MAX_ROWS]]
    if len(table["rows"]) > MAX_ROWS:
        lines.append(f"... (only the first {MAX_ROWS} rows are shown)")
    return "\n".join(lines)


def shop_rows(rng: np.random.Generator) -> dict[str, list[tuple]]:
    """The database's rows, drawn from ``rng``."""
    cities = rng.choice(_CITIES, size=len(_CUSTOMERS))
    prices = rng.integers(150, 5000, size=len(_PRODUCTS))
    orders = [
        (i + 1, int(rng.integers(1, len(_CUSTOMERS) + 1)),
         int(rng.integers(1, len(_PRODUCTS) + 1)), int(rng.integers(1, 6)))
        for i in range(int(rng.integers(20, 60)))
    ]
    return {
        "customers": [(i + 1, name, str(cities[i])) for i, name in enumerate(_CUSTOMERS)],
        "products": [(i + 1, name, int(prices[i])) for i, name in enumerate(_PRODUCTS)],
        "orders": orders,
    }


def build_database(connection: sqlite3.Connection, rows: dict[str, list[tuple]]) -> None:
    connection.executescript(SCHEMA)
    for table, values in rows.items():
        marks = ", ".join("?" * len(values[0]))
        connection.executemany(f"INSERT INTO {table} VALUES ({marks})", values)
    connection.commit()


QUESTIONS = {
    "units_of_product": (
        "How many units of {product} were ordered in total?",
        "SELECT COALESCE(SUM(o.quantity), 0) FROM orders o JOIN products p "
        "ON p.id = o.product_id WHERE p.name = :product",
    ),
    "city_revenue": (
        "What is the total revenue, in cents, of orders placed by customers in {city}?",
        "SELECT COALESCE(SUM(o.quantity * p.price_cents), 0) FROM orders o "
        "JOIN products p ON p.id = o.product_id JOIN customers c ON c.id = o.customer_id "
        "WHERE c.city = :city",
    ),
    "customer_orders": (
        "How many orders did {customer} place?",
        "SELECT COUNT(*) FROM orders o JOIN customers c ON c.id = o.customer_id "
        "WHERE c.name = :customer",
    ),
}


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


class ShopSQL(ToolEnv):
    """Answer a question about a shop's database by querying it with the ``sql`` tool.

    Reset options: ``question``, one of :data:`QUESTIONS` (default: drawn with the seed).
    Reward: gold 1.0 when the final answer is the right number, else 0.
    """

    tools = (sql,)
    verifier = NumericMatch()

    def draw_task(self, rng: np.random.Generator, *, question: str | None = None) -> Task:
        if question is None:
            question = str(rng.choice(sorted(QUESTIONS)))
        elif question not in QUESTIONS:
            raise InvalidOption(f"question must be one of {sorted(QUESTIONS)}, got {question!r}")
        rows = shop_rows(rng)
        parameters = {
            "product": str(rng.choice(_PRODUCTS)),
            "city": str(rng.choice(_CITIES)),
            "customer": str(rng.choice(_CUSTOMERS)),
        }
        text, gold_query = QUESTIONS[question]
        with sqlite3.connect(":memory:") as host_copy:
            build_database(host_copy, rows)
            (answer,) = host_copy.execute(gold_query, parameters).fetchone()
        return Task(prompt=text.format(**parameters), reference=str(answer),
                    data={"rows": rows}, id=f"shop_sql:{question}:{_digest(rows, parameters)}")

    async def setup(self, task: Task, sandbox: SandboxAPI) -> None:
        script = (
            "import json, sqlite3, sys\n"
            f"db = sqlite3.connect({DATABASE!r})\n"
            f"db.executescript({SCHEMA!r})\n"
            "for table, values in json.loads(sys.stdin.read()).items():\n"
            "    marks = ', '.join('?' * len(values[0]))\n"
            "    db.executemany(f'INSERT INTO {table} VALUES ({marks})', values)\n"
            "db.commit()\n"
        )
        result = await sandbox.exec(["python3", "-c", script], timeout=30,
                                    stdin=json.dumps(task.data["rows"]))
        if not result.ok:
            raise RuntimeError(f"could not build the database in the sandbox: {result.stderr}")


if "examples/ShopSQL-v0" not in gymnasium.registry:
    gymnasium.register(id="examples/ShopSQL-v0", entry_point=ShopSQL)

if __name__ == "__main__":
    play("examples/ShopSQL-v0", seed=int(sys.argv[1]) if len(sys.argv) > 1 else None)
