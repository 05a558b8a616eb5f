"""Sample sessions for ``ccrl demo``: varied, realistic Claude Code work in small scratch projects.

``scripts/make_samples.py`` runs every session below with the REAL Claude Code CLI against the
scripted Messages API of :mod:`tests.e2e.scripted_api` (the CLI really runs the tools and writes
real transcripts), then ships the transcripts in ``agent/data/samples/``. This module only
builds the projects and the scripts that work on them.

What the sessions are like
--------------------------
Twelve kinds of task, each in its own small Python project (a ``src/`` package, tests, a README,
sometimes a config folder or a script), with names, files, phrasings and orders drawn from pools
by a seeded generator: fixing a bug reported through failing tests or through a wrong result,
explaining code, renaming a function, changing a config value (sometimes the first Edit misses
and is redone), running a script that fails first and then recovering, comparing two files
(parallel reads), finding TODO comments, sizing the code, adding a test, writing a new script,
documenting a function. Some sessions continue with a follow-up prompt (``claude -p
--continue``). The next action depends on the prompt and on what the tools returned (a red test
run is followed by reading the code, a green one by the answer), as in real sessions; a model
that only counts which tool usually follows which cannot learn that.

Scripts are chosen by the exact prompt text (:class:`PromptScriptedAPI`), so the prompts stored
in the transcripts carry no ``[scenario:…]`` tag. Every scenario states which of its calls are
expected to fail (``expect_errors``); ``make_samples.py`` checks that against the imported traces.
"""

from __future__ import annotations

import random
import subprocess
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .harness import ClaudeRun, PendingRun, Sandbox
from .scripted_api import Block, ScriptedAPI, Script, Step, _blocks, final_text, is_real_prompt, text, thinking, tool_use

# --------------------------------------------------------------------------------------------
# Serving scripts by prompt, and a CLI that may also write files
# --------------------------------------------------------------------------------------------


class PromptScriptedAPI(ScriptedAPI):
    """A :class:`ScriptedAPI` that picks the script by the exact text of the latest real prompt.

    The e2e tests tag prompts with ``[scenario:KEY]``; sample sessions must look like real ones,
    so here each prompt (unique across the samples) is its own key.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.by_prompt: dict[str, str] = {}

    def add_prompt_script(self, prompt: str, script: Script) -> str:
        """Register ``script`` for ``prompt``; returns the internal key."""
        if prompt in self.by_prompt:
            raise ValueError(f"duplicate prompt {prompt!r}")
        key = f"p{len(self.by_prompt)}"
        self.add_script(key, script)
        with self._lock:
            self.by_prompt[prompt] = key
        return key

    def choose(self, body: dict[str, Any]) -> tuple[Step, Any]:
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        for index in range(len(messages) - 1, -1, -1):
            if not is_real_prompt(messages[index]):
                continue
            texts = [str(b.get("text", "")).strip() for b in _blocks(messages[index].get("content")) if b.get("type") == "text"]
            with self._lock:
                key = next((self.by_prompt[t] for t in texts if t in self.by_prompt), None)
            if key is None:
                break
            step = sum(1 for m in messages[index + 1:] if m.get("role") == "assistant")
            # Re-tag the body so the base class's bookkeeping (records, errors) applies unchanged.
            tagged = dict(body)
            tagged["messages"] = [*messages[:index], {"role": "user", "content": f"[scenario:{key}]"},
                                  *messages[index + 1:]]
            chosen, record = super().choose(tagged)
            record.body = body
            record.step = step
            return chosen, record
        return super().choose(body)


class PatientRun(PendingRun):
    """A run waited for longer than the e2e tests wait: generating the samples on a busy machine
    (many sessions at once, pytest inside the sessions) can take minutes per session."""

    TIMEOUT_S = 900

    def wait(self) -> ClaudeRun:
        try:
            stdout, stderr = self.proc.communicate(timeout=self.TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            stdout, stderr = self.proc.communicate()
            stderr += f"\n[killed after {self.TIMEOUT_S}s]".encode()
        return ClaudeRun(self.args, self.cwd, self.proc.returncode, stdout, stderr, time.monotonic() - self.started)


class SampleSandbox(Sandbox):
    """The e2e harness's isolated user, with ``Write`` allowed too (some tasks create files)."""

    TOOLS = ("Read", "Edit", "Write", "Grep", "Bash", "Glob")

    def start_claude(self, prompt: str, cwd: Path, *, continue_session: bool = False) -> PendingRun:
        args = [str(self.claude_bin), "-p"]
        if continue_session:
            args.append("--continue")
        args += [prompt, "--allowedTools", *self.TOOLS]
        proc = subprocess.Popen(args, cwd=cwd, env=self.env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return PatientRun(proc, args, cwd, time.monotonic())


# --------------------------------------------------------------------------------------------
# Scenarios and sessions
# --------------------------------------------------------------------------------------------


@dataclass
class Scenario:
    """One prompt and the script that answers it; ``expect_errors`` lists, per tool call in call
    order, whether Claude Code should report it as failed."""

    family: str
    prompt: str
    script: Script
    expect_errors: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        calls = [b for step in self.script for b in step if b.type == "tool_use"]
        if not self.expect_errors:
            self.expect_errors = [False] * len(calls)
        if len(self.expect_errors) != len(calls):
            raise ValueError(f"{self.family}: {len(calls)} calls but {len(self.expect_errors)} expectations")

    @property
    def response(self) -> str:
        return final_text(self.script)

    @property
    def tool_sequence(self) -> list[str]:
        return [b.name for step in self.script for b in step if b.type == "tool_use"]


@dataclass
class Session:
    """A scratch project and the prompts asked in it, in order (the 2nd and later with --continue)."""

    name: str
    project: Path
    scenarios: list[Scenario]


def _write(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


def _dedent(source: str) -> str:
    return textwrap.dedent(source).lstrip("\n")


# --------------------------------------------------------------------------------------------
# Project material: small modules with one bug each, packages, configs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bug:
    """A module with one function whose ``good`` line was replaced by ``bad``."""

    module: str
    func: str
    source: str  # the module with {LINE} where the good or bad line goes
    good: str
    bad: str
    tests: str  # uses {pkg}
    failing_test: str
    symptom: str  # what a user sees
    cause: str  # what Claude finds
    edge_test: str  # a further test (for "add a test" tasks), uses {pkg}
    edge_desc: str


BUGS = [
    Bug("pricing", "apply_discount",
        '''
        """Prices and discounts."""


        def apply_discount(price, percent):
            """The price after a percentage discount, rounded to cents."""
        {LINE}


        def format_price(amount):
            return f"${amount:,.2f}"
        ''',
        "    return round(price * (1 - percent / 100), 2)", "    return round(price * (1 - percent), 2)",
        '''
        from {pkg}.pricing import apply_discount, format_price


        def test_ten_percent_off():
            assert apply_discount(50.0, 10) == 45.0


        def test_no_discount():
            assert apply_discount(19.99, 0) == 19.99


        def test_format_price():
            assert format_price(1234.5) == "$1,234.50"
        ''',
        "test_ten_percent_off", "apply_discount(50, 10) returns -450.0 instead of 45.0",
        "the percentage is used as a fraction: `1 - percent` should be `1 - percent / 100`",
        '''

        def test_full_discount_is_free():
            assert apply_discount(80.0, 100) == 0.0
        ''', "a 100% discount"),
    Bug("temperature", "celsius_to_fahrenheit",
        '''
        """Temperature conversions."""


        def celsius_to_fahrenheit(celsius):
        {LINE}


        def fahrenheit_to_celsius(fahrenheit):
            return (fahrenheit - 32) * 5 / 9
        ''',
        "    return celsius * 9 / 5 + 32", "    return celsius * 5 / 9 + 32",
        '''
        from {pkg}.temperature import celsius_to_fahrenheit, fahrenheit_to_celsius


        def test_boiling_point():
            assert celsius_to_fahrenheit(100) == 212


        def test_freezing_point():
            assert celsius_to_fahrenheit(0) == 32


        def test_round_trip():
            assert fahrenheit_to_celsius(212) == 100
        ''',
        "test_boiling_point", "celsius_to_fahrenheit(100) gives 87.55 instead of 212",
        "the factor is inverted: it multiplies by 5/9 where Celsius to Fahrenheit needs 9/5",
        '''

        def test_minus_forty_is_the_same_on_both_scales():
            assert celsius_to_fahrenheit(-40) == -40
        ''', "-40 degrees, where both scales meet"),
    Bug("stats", "mean",
        '''
        """Small statistics helpers."""


        def mean(values):
            if not values:
                raise ValueError("mean of an empty list")
        {LINE}


        def spread(values):
            return max(values) - min(values)
        ''',
        "    return sum(values) / len(values)", "    return sum(values) / (len(values) - 1)",
        '''
        import pytest

        from {pkg}.stats import mean, spread


        def test_mean():
            assert mean([2, 4, 6]) == 4


        def test_mean_of_nothing():
            with pytest.raises(ValueError):
                mean([])


        def test_spread():
            assert spread([3, 9, 4]) == 6
        ''',
        "test_mean", "mean([2, 4, 6]) returns 6.0 instead of 4",
        "it divides by `len(values) - 1` (a sample-variance habit) instead of `len(values)`",
        '''

        def test_mean_of_one_value():
            assert mean([7]) == 7
        ''', "a single value"),
    Bug("text", "slugify",
        '''
        """Text helpers for URLs and titles."""


        def slugify(title):
            """A URL slug: lower case words joined by hyphens."""
        {LINE}


        def title_case(text):
            return " ".join(word.capitalize() for word in text.split())
        ''',
        '    return "-".join(title.lower().split())', '    return "_".join(title.lower().split())',
        '''
        from {pkg}.text import slugify, title_case


        def test_slugify():
            assert slugify("Hello World") == "hello-world"


        def test_title_case():
            assert title_case("the long road") == "The Long Road"
        ''',
        "test_slugify", 'slugify("Hello World") gives "hello_world" instead of "hello-world"',
        "the words are joined with underscores instead of hyphens",
        '''

        def test_slugify_collapses_spaces():
            assert slugify("  Many   Spaces  Here ") == "many-spaces-here"
        ''', "repeated spaces"),
    Bug("cart", "cart_total",
        '''
        """Shopping cart arithmetic."""


        def cart_total(items):
            """Sum of price x quantity over the cart's items."""
        {LINE}


        def item_count(items):
            return sum(item["qty"] for item in items)
        ''',
        '    return sum(item["price"] * item["qty"] for item in items)', '    return sum(item["price"] for item in items)',
        '''
        from {pkg}.cart import cart_total, item_count

        ITEMS = [{"price": 2.5, "qty": 4}, {"price": 10.0, "qty": 1}]


        def test_total_counts_quantities():
            assert cart_total(ITEMS) == 20.0


        def test_item_count():
            assert item_count(ITEMS) == 5
        ''',
        "test_total_counts_quantities", "cart_total ignores quantities: 12.5 instead of 20.0 for the test cart",
        "the sum adds each item's price once and never multiplies by its quantity",
        '''

        def test_empty_cart_costs_nothing():
            assert cart_total([]) == 0
        ''', "an empty cart"),
    Bug("calendar_utils", "is_leap_year",
        '''
        """Calendar helpers."""


        def is_leap_year(year):
        {LINE}


        def days_in_year(year):
            return 366 if is_leap_year(year) else 365
        ''',
        "    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)", "    return year % 4 == 0",
        '''
        from {pkg}.calendar_utils import days_in_year, is_leap_year


        def test_century_is_not_leap():
            assert not is_leap_year(1900)


        def test_leap_years():
            assert is_leap_year(2000) and is_leap_year(2024)


        def test_days_in_year():
            assert days_in_year(2023) == 365
        ''',
        "test_century_is_not_leap", "is_leap_year(1900) is True, but 1900 was not a leap year",
        "the century rule is missing: years divisible by 100 are leap years only when divisible by 400",
        '''

        def test_2100_is_not_leap():
            assert days_in_year(2100) == 365
        ''', "the year 2100"),
    Bug("grades", "letter_grade",
        '''
        """Turning scores into letter grades."""


        def letter_grade(score):
        {LINE}
                return "A"
            if score >= 80:
                return "B"
            if score >= 70:
                return "C"
            return "F"
        ''',
        "    if score >= 90:", "    if score > 90:",
        '''
        from {pkg}.grades import letter_grade


        def test_boundary_is_an_a():
            assert letter_grade(90) == "A"


        def test_b_and_f():
            assert letter_grade(85) == "B"
            assert letter_grade(12) == "F"
        ''',
        "test_boundary_is_an_a", "a score of exactly 90 gets a B instead of an A",
        "the first comparison is `score > 90`; the A band starts at 90 inclusive",
        '''

        def test_seventy_is_a_c():
            assert letter_grade(70) == "C"
        ''', "the C boundary at 70"),
    Bug("strings", "truncate",
        '''
        """String shortening for previews."""


        def truncate(text, limit):
            """At most ``limit`` characters of ``text``, then "..." when it was cut."""
            if len(text) <= limit:
                return text
        {LINE}
        ''',
        '    return text[:limit] + "..."', '    return text[: limit - 1] + "..."',
        '''
        from {pkg}.strings import truncate


        def test_short_text_unchanged():
            assert truncate("abc", 5) == "abc"


        def test_cut_keeps_limit_characters():
            assert truncate("abcdef", 3) == "abc..."
        ''',
        "test_cut_keeps_limit_characters", 'truncate("abcdef", 3) returns "ab..." instead of "abc..."',
        "an off-by-one: the slice stops at `limit - 1`",
        '''

        def test_exact_length_is_not_cut():
            assert truncate("abcd", 4) == "abcd"
        ''', "text exactly at the limit"),
    Bug("durations", "format_minutes",
        '''
        """Durations for humans."""


        def format_minutes(minutes):
            """135 -> "2h 15m"."""
        {LINE}
        ''',
        '    return f"{minutes // 60}h {minutes % 60:02d}m"', '    return f"{minutes // 60}h {minutes // 60:02d}m"',
        '''
        from {pkg}.durations import format_minutes


        def test_hours_and_minutes():
            assert format_minutes(135) == "2h 15m"


        def test_under_an_hour():
            assert format_minutes(5) == "0h 05m"
        ''',
        "test_hours_and_minutes", 'format_minutes(135) gives "2h 02m" instead of "2h 15m"',
        "the minutes part uses `minutes // 60` again instead of the remainder `minutes % 60`",
        '''

        def test_whole_hours():
            assert format_minutes(120) == "2h 00m"
        ''', "whole hours"),
    Bug("geometry", "circle_area",
        '''
        """Plane geometry."""

        import math


        def circle_area(radius):
        {LINE}


        def rectangle_area(width, height):
            return width * height
        ''',
        "    return math.pi * radius ** 2", "    return 2 * math.pi * radius",
        '''
        from {pkg}.geometry import circle_area, rectangle_area


        def test_circle_area():
            assert round(circle_area(3), 2) == 28.27


        def test_rectangle_area():
            assert rectangle_area(3, 4) == 12
        ''',
        "test_circle_area", "circle_area(3) returns 18.85, which is the circumference, not the area",
        "it computes the circumference `2 * pi * r`; the area is `pi * r ** 2`",
        '''

        def test_zero_radius():
            assert circle_area(0) == 0
        ''', "a zero radius"),
    Bug("invoice", "add_tax",
        '''
        """Invoice amounts."""


        def add_tax(amount, rate):
            """``amount`` plus tax at ``rate`` (0.2 = 20%), rounded to cents."""
        {LINE}


        def line_total(quantity, unit_price):
            return round(quantity * unit_price, 2)
        ''',
        "    return round(amount * (1 + rate), 2)", "    return round(amount * rate, 2)",
        '''
        from {pkg}.invoice import add_tax, line_total


        def test_add_tax():
            assert add_tax(100, 0.2) == 120.0


        def test_line_total():
            assert line_total(3, 1.1) == 3.3
        ''',
        "test_add_tax", "add_tax(100, 0.2) returns 20.0 (only the tax) instead of 120.0",
        "it returns the tax alone: `amount * rate` instead of `amount * (1 + rate)`",
        '''

        def test_zero_rate_keeps_the_amount():
            assert add_tax(59.99, 0) == 59.99
        ''', "a zero tax rate"),
    Bug("queue_utils", "pop_oldest",
        '''
        """A first-in, first-out job queue on a list."""


        def push(queue, job):
            queue.append(job)


        def pop_oldest(queue):
            """Remove and return the job that waited longest."""
        {LINE}
        ''',
        "    return queue.pop(0)", "    return queue.pop()",
        '''
        from {pkg}.queue_utils import pop_oldest, push


        def test_fifo_order():
            queue = []
            push(queue, "a")
            push(queue, "b")
            assert pop_oldest(queue) == "a"
        ''',
        "test_fifo_order", 'pop_oldest returns the newest job ("b") instead of the oldest ("a")',
        "`queue.pop()` takes from the end; the oldest job is at index 0",
        '''

        def test_queue_shrinks():
            queue = ["x", "y"]
            pop_oldest(queue)
            assert queue == ["y"]
        ''', "the queue shrinking by one"),
    Bug("units", "km_to_miles",
        '''
        """Unit conversions."""

        MILES_PER_KM = 0.621371


        def km_to_miles(km):
        {LINE}


        def miles_to_km(miles):
            return miles / MILES_PER_KM
        ''',
        "    return km * MILES_PER_KM", "    return km / MILES_PER_KM",
        '''
        from {pkg}.units import km_to_miles, miles_to_km


        def test_ten_km():
            assert round(km_to_miles(10), 2) == 6.21


        def test_back_and_forth():
            assert round(miles_to_km(km_to_miles(5)), 6) == 5
        ''',
        "test_ten_km", "km_to_miles(10) gives 16.09 instead of 6.21",
        "it divides by the miles-per-km factor instead of multiplying by it",
        '''

        def test_marathon():
            assert round(km_to_miles(42.195), 1) == 26.2
        ''', "a marathon distance"),
]

SUMMARIES = {
    "apply_discount": "it takes a price and a percentage and returns the discounted price, rounded to cents.",
    "celsius_to_fahrenheit": "it converts Celsius to Fahrenheit as `celsius * 9 / 5 + 32`.",
    "mean": "it returns the arithmetic mean of a list and raises ValueError for an empty one.",
    "slugify": "it lower-cases a title and joins its words with hyphens, for URLs.",
    "cart_total": "it sums price times quantity over the cart's items.",
    "is_leap_year": "it applies the Gregorian rule (every 4th year, except centuries not divisible by 400).",
    "letter_grade": "it maps a score to A (90+), B (80+), C (70+) or F.",
    "truncate": "it cuts text to `limit` characters and appends \"...\" when it had to cut.",
    "format_minutes": "it turns a number of minutes into \"Xh YYm\".",
    "circle_area": "it returns `pi * r ** 2`.",
    "add_tax": "it adds tax at the given rate (0.2 = 20%) and rounds to cents.",
    "pop_oldest": "it removes and returns the first job of the list, so the queue is first-in, first-out.",
    "km_to_miles": "it multiplies kilometres by 0.621371.",
}

PACKAGES = [
    ("shopkit", "A tiny toolkit for a corner-shop website."),
    ("weatherly", "Weather station readings and conversions."),
    ("gradebook", "Keeps track of a class's scores."),
    ("tinyledger", "A minimal double-entry ledger."),
    ("parkmate", "Parking-lot occupancy and fees."),
    ("recipebox", "Recipes, scaling and shopping lists."),
    ("tripplan", "Plans multi-stop road trips."),
    ("bookshelf", "A personal library catalogue."),
    ("fitlog", "Workout logging and summaries."),
    ("petcare", "Feeding and vet schedules for pets."),
    ("notekeeper", "Plain-text notes with tags."),
    ("chessclock", "A clock for over-the-board chess."),
    ("plantwater", "Reminds you to water your plants."),
    ("busstop", "Departure boards for bus stops."),
    ("cinemaseat", "Seat booking for a small cinema."),
    ("quizmaster", "Runs pub-quiz rounds and scores."),
    ("homebudget", "Monthly household budgeting."),
    ("bikeshare", "Bike-share dock availability."),
    ("jobqueue", "A toy background job runner."),
    ("mealplan", "Weekly meal planning."),
]


@dataclass
class Project:
    """A laid-out scratch project: its package and the modules in it."""

    root: Path
    pkg: str
    tagline: str
    bugs: list[Bug]  # modules in src/<pkg>/, each with its tests

    def src(self, module: str) -> Path:
        return self.root / "src" / self.pkg / f"{module}.py"

    def test(self, module: str) -> Path:
        return self.root / "tests" / f"test_{module}.py"


def module_source(bug: Bug, broken: bool) -> str:
    return _dedent(bug.source).replace("{LINE}", bug.bad if broken else bug.good)


def layout(root: Path, pkg: str, tagline: str, bugs: list[Bug], broken: Bug | None = None,
           version: str = "0.3.1") -> Project:
    """A ``src/`` layout project with one module (and its tests) per bug; ``broken`` carries its bug."""
    _write(root / "README.md", f"# {pkg}\n\n{tagline}\n\n## Usage\n\n    pip install -e .\n    pytest -q\n")
    _write(root / "pyproject.toml", _dedent(f'''
        [project]
        name = "{pkg}"
        version = "{version}"
        requires-python = ">=3.10"

        [tool.pytest.ini_options]
        pythonpath = ["src"]
        '''))
    _write(root / "src" / pkg / "__init__.py", f'"""{tagline}"""\n\n__version__ = "{version}"\n')
    for bug in bugs:
        _write(root / "src" / pkg / f"{bug.module}.py", module_source(bug, broken is bug))
        _write(root / "tests" / f"test_{bug.module}.py", _dedent(bug.tests).replace("{pkg}", pkg))
    return Project(root, pkg, tagline, bugs)


def _edge_addition(bug: Bug) -> str:
    """The further test, to append after the test file's last line (two blank lines first)."""
    return "\n\n\n" + textwrap.dedent(bug.edge_test).strip("\n")


def files_mentioning(root: Path, word: str) -> list[Path]:
    """Files of a freshly laid-out project that contain ``word`` (to keep answers true)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and word in p.read_text())


def pytest_cmd(path: str | None = None) -> str:
    return "python3 -m pytest -q" + (f" {path}" if path else "")


# --------------------------------------------------------------------------------------------
# The families of tasks
# --------------------------------------------------------------------------------------------


class Builder:
    """Draws projects and scenarios from the pools with one seeded generator."""

    def __init__(self, root: Path, seed: int = 7) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.used_names: set[str] = set()
        self.package_cycle = 0
        from ccrl.agent.core.dataset_config import DatasetSettings
        from ccrl.agent.datasets.dataset_filters import PromptDeduper

        self.dedupe = PromptDeduper(DatasetSettings())

    # helpers
    def prompt(self, options: list[str]) -> str:
        """One of ``options`` (in random order) that ccrl's dataset builder will not drop as a
        duplicate or near-duplicate of a prompt chosen before (same check, same settings)."""
        for option in self.rng.sample(options, len(options)):
            if self.dedupe.check_and_add(option) is None:
                return option
        raise ValueError(f"every prompt option repeats an earlier prompt: {options}")

    def pick(self, options: list[Any]) -> Any:
        return self.rng.choice(options)

    def maybe(self, p: float = 0.5) -> bool:
        return self.rng.random() < p

    def project_dir(self, family: str) -> Path:
        for n in range(1, 1000):
            name = f"{family}-{n:02d}"
            if name not in self.used_names:
                self.used_names.add(name)
                return self.root / name
        raise RuntimeError("too many projects")

    def package(self) -> tuple[str, str]:
        pkg = PACKAGES[self.package_cycle % len(PACKAGES)]
        self.package_cycle += 1
        return pkg

    def bugs(self, target: Bug, others: int = 1) -> list[Bug]:
        pool = [b for b in BUGS if b is not target]
        return [target, *self.rng.sample(pool, others)]

    def rel(self, project: Project, path: Path) -> str:
        return str(path.relative_to(project.root))

    # --- A: failing tests reported, run them first -----------------------------------------
    def fix_from_tests(self, bug: Bug) -> Session:
        pkg, tagline = self.package()
        project = layout(self.project_dir("fix-tests"), pkg, tagline, self.bugs(bug, self.pick([1, 2])), broken=bug)
        test_rel = self.rel(project, project.test(bug.module))
        prompt = self.prompt([
            f"The tests in {test_rel} are failing. Can you find the bug and fix it?",
            f"pytest is red for the {bug.module} module of {pkg}, please fix whatever broke.",
            f"Something broke {bug.func} in {pkg}: {test_rel} fails now. Fix it please.",
            f"CI says {bug.failing_test} fails. Could you track down the cause in {pkg} and fix it?",
        ])
        src = project.src(bug.module)
        script: Script = [
            [thinking(self.pick([
                "The user says tests fail. First I'll run them to see the actual assertion.",
                "Let me run the failing tests first so I know exactly what breaks.",
                "I should reproduce the failure before touching any code. Run the tests first.",
            ])),
             text(self.pick(["Let me run the tests first.", "Running the failing tests to see the error.", ""]) or "I'll start by running the tests."),
             tool_use("Bash", {"command": pytest_cmd(test_rel), "description": f"Run the {bug.module} tests"})],
            [thinking(f"The failure: {bug.symptom}. I need to read {bug.func} in {self.rel(project, src)} before changing it."),
             tool_use("Read", {"file_path": str(src)})],
            [thinking(f"Found it: {bug.cause}."),
             text(f"The bug is in `{bug.func}`: {bug.cause}. Fixing it."),
             tool_use("Edit", {"file_path": str(src), "old_string": bug.bad.strip(), "new_string": bug.good.strip()})],
            [text(self.pick(["Now let me run the tests again to confirm the fix.", "Re-running the tests to make sure they pass.",
                             "Let me verify with the tests."])),
             tool_use("Bash", {"command": pytest_cmd(test_rel), "description": "Re-run the tests"})],
            [text(f"Fixed `{bug.func}` in `{self.rel(project, src)}`: {bug.cause}. "
                  f"The tests in `{test_rel}` pass now.")],
        ]
        first = Scenario("fix-from-tests", prompt, script, [True, False, False, False])
        scenarios = [first]
        if self.maybe(0.45):
            scenarios.append(self.follow_up_edge_test(project, bug))
        return Session(project.root.name, project.root, scenarios)

    def follow_up_edge_test(self, project: Project, bug: Bug) -> Scenario:
        test = project.test(bug.module)
        test_rel = self.rel(project, test)
        prompt = self.prompt([
            f"Thanks! Can you also add a test for {bug.edge_desc}?",
            f"Please add one more test to {test_rel} that covers {bug.edge_desc}.",
            f"Good. Now add a regression test for {bug.edge_desc} as well.",
        ])
        last_line = _dedent(bug.tests).replace("{pkg}", project.pkg).rstrip("\n").splitlines()[-1]
        addition = _edge_addition(bug)
        script: Script = [
            [thinking(f"I'll read {test_rel} first so the new test matches the existing style."),
             tool_use("Read", {"file_path": str(test)})],
            [text(f"Adding a test for {bug.edge_desc} at the end of the file."),
             tool_use("Edit", {"file_path": str(test), "old_string": last_line, "new_string": last_line + addition})],
            [tool_use("Bash", {"command": pytest_cmd(test_rel), "description": "Run the tests with the new one"})],
            [text(f"Added a test for {bug.edge_desc} to `{test_rel}`; all tests pass.")],
        ]
        return Scenario("follow-up-test", prompt, script)

    # --- B: a wrong result reported, locate the function first -----------------------------
    def fix_from_symptom(self, bug: Bug) -> Session:
        pkg, tagline = self.package()
        project = layout(self.project_dir("fix-symptom"), pkg, tagline, self.bugs(bug, self.pick([1, 2])), broken=bug)
        src, test = project.src(bug.module), project.test(bug.module)
        prompt = self.prompt([
            f"{bug.symptom}. Please fix it.",
            f"Looks like {bug.func} is wrong in {pkg}: {bug.symptom}. Can you fix that?",
            f"Bug report from a {pkg} user: {bug.symptom}. Please investigate and fix.",
        ])
        grep_input: dict[str, Any] = {"pattern": f"def {bug.func}", "path": str(project.root)}
        if self.maybe():
            grep_input |= {"output_mode": "content", "-n": True}
        parallel = self.maybe(0.5)
        reads = [tool_use("Read", {"file_path": str(src)})] + ([tool_use("Read", {"file_path": str(test)})] if parallel else [])
        script: Script = [
            [thinking(f"I need to find where {bug.func} is defined first."),
             text(f"Let me find `{bug.func}`."),
             tool_use("Grep", grep_input)],
            [thinking("It is in " + self.rel(project, src) + (". I'll read it together with its tests." if parallel
                                                               else ". Let me read it before editing.")),
             *reads],
            [thinking(f"The problem: {bug.cause}."),
             tool_use("Edit", {"file_path": str(src), "old_string": bug.bad.strip(), "new_string": bug.good.strip()})],
            [text("Let me run the test suite to make sure the fix holds and nothing else broke."),
             tool_use("Bash", {"command": pytest_cmd(), "description": "Run all tests"})],
            [text(f"Fixed: {bug.cause}. The change is in `{self.rel(project, src)}` and the whole test suite passes.")],
        ]
        scenarios = [Scenario("fix-from-symptom", prompt, script)]
        if self.maybe(0.3):
            scenarios.append(self.follow_up_usage(project, bug))
        return Session(project.root.name, project.root, scenarios)

    def follow_up_usage(self, project: Project, bug: Bug) -> Scenario:
        test = project.test(bug.module)
        if files_mentioning(project.root, bug.func) != sorted([project.src(bug.module), test]):
            raise ValueError(f"{bug.func} is mentioned outside its module and tests: the script's answer would be wrong")
        prompt = self.prompt([
            f"Where else is {bug.func} used in the project?",
            f"Which files call {bug.func}? I want to know what the fix affects.",
        ])
        script: Script = [
            [thinking(f"Let me search the whole project for {bug.func}, not just its definition."),
             tool_use("Grep", {"pattern": bug.func, "path": str(project.root), "output_mode": "content", "-n": True})],
            [text("Only the module itself and its tests mention it; let me check how the tests use it."),
             tool_use("Read", {"file_path": str(test)})],
            [text(f"`{bug.func}` is only used in `{self.rel(project, project.src(bug.module))}` itself and in "
                  f"`{self.rel(project, test)}`, so the fix affects nothing else.")],
        ]
        return Scenario("follow-up-usage", prompt, script)

    # --- C: explain code (no edits) --------------------------------------------------------
    def explain(self) -> Session:
        pkg, tagline = self.package()
        bugs = self.rng.sample(BUGS, self.pick([2, 3]))
        project = layout(self.project_dir("explain"), pkg, tagline, bugs)
        focus = bugs[0]
        by_glob = self.maybe(0.55)
        if by_glob:
            prompt = self.prompt([
                f"I'm new to {pkg}. How is the code organised, and what does each module do?",
                f"Give me a quick tour of the {pkg} codebase, please.",
                f"What's in this repo? Summarise the modules of {pkg} for me.",
            ])
            first: Step = [thinking("Let me list the Python files first to see the layout."),
                           tool_use("Glob", {"pattern": "**/*.py", "path": str(project.root)})]
            reads = [tool_use("Read", {"file_path": str(project.root / "README.md")}),
                     *[tool_use("Read", {"file_path": str(project.src(b.module))}) for b in bugs[:2]]]
            second: Step = [text("Reading the README and the main modules."), *reads]
            names = ", ".join(f"`{b.module}`" for b in bugs)
            answer = (f"{pkg} is a small `src/` layout package ({tagline.rstrip('.').lower()}). It has the modules {names}; "
                      f"`{focus.module}` provides `{focus.func}`, and each module has its own test file under `tests/`.")
        else:
            prompt = self.prompt([
                f"How does {focus.func} work in {pkg}?",
                f"Can you explain what {focus.func} does and where it lives?",
                f"Walk me through the {focus.func} function, I need to change it soon.",
            ])
            first = [thinking(f"I'll search for the definition of {focus.func}."),
                     tool_use("Grep", {"pattern": f"def {focus.func}", "path": str(project.root), "output_mode": "files_with_matches"})]
            second = [text(f"It's in `{self.rel(project, project.src(focus.module))}`; reading it and its tests."),
                      tool_use("Read", {"file_path": str(project.src(focus.module))}),
                      tool_use("Read", {"file_path": str(project.test(focus.module))})]
            answer = (f"`{focus.func}` lives in `{self.rel(project, project.src(focus.module))}`: {SUMMARIES[focus.func]} "
                      f"The tests in `{self.rel(project, project.test(focus.module))}` pin that behaviour down.")
        script: Script = [first, second, [text(answer)]]
        scenarios = [Scenario("explain", prompt, script)]
        return Session(project.root.name, project.root, scenarios)

    # --- D: rename a function everywhere ---------------------------------------------------
    def rename(self, bug: Bug) -> Session:
        pkg, tagline = self.package()
        project = layout(self.project_dir("rename"), pkg, tagline, self.bugs(bug, 1))
        new = self.pick({
            "apply_discount": ["discounted_price", "price_after_discount"],
            "celsius_to_fahrenheit": ["c_to_f", "to_fahrenheit"],
            "mean": ["average", "arithmetic_mean"],
            "slugify": ["make_slug", "url_slug"],
            "cart_total": ["total_price", "order_total"],
            "is_leap_year": ["leap_year", "is_leap"],
            "letter_grade": ["grade_for", "to_letter"],
            "truncate": ["shorten", "clip_text"],
            "format_minutes": ["human_duration", "minutes_label"],
            "circle_area": ["area_of_circle", "disc_area"],
            "add_tax": ["with_tax", "gross_amount"],
            "pop_oldest": ["take_next", "dequeue"],
            "km_to_miles": ["kilometres_to_miles", "to_miles"],
        }[bug.func])
        src, test = project.src(bug.module), project.test(bug.module)
        if files_mentioning(project.root, bug.func) != sorted([src, test]):
            raise ValueError(f"{bug.func} is mentioned outside {src.name} and {test.name}: the script's claims would be wrong")
        prompt = self.prompt([
            f"Rename {bug.func} to {new} everywhere in {pkg}.",
            f"Please rename the function {bug.func} -> {new}, including the tests.",
            f"I'd like {bug.func} to be called {new}. Update every use.",
        ])
        script: Script = [
            [thinking(f"Before renaming I need every place that mentions {bug.func}."),
             tool_use("Grep", {"pattern": bug.func, "path": str(project.root), "output_mode": "files_with_matches"})],
            [text("Two files use it. I must read both before editing them."),
             tool_use("Read", {"file_path": str(src)}), tool_use("Read", {"file_path": str(test)})],
            [text(f"Renaming `{bug.func}` to `{new}` in both files."),
             tool_use("Edit", {"file_path": str(src), "old_string": bug.func, "new_string": new, "replace_all": True}),
             tool_use("Edit", {"file_path": str(test), "old_string": bug.func, "new_string": new, "replace_all": True})],
            [thinking("Make sure nothing still refers to the old name and the tests pass."),
             tool_use("Bash", {"command": f"grep -rn {bug.func} src tests || {pytest_cmd()}",
                               "description": "Check for leftovers, then run the tests"})],
            [text(f"Renamed `{bug.func}` to `{new}` in `{self.rel(project, src)}` and `{self.rel(project, test)}`; "
                  "no reference to the old name is left and the tests pass.")],
        ]
        return Session(project.root.name, project.root, [Scenario("rename", prompt, script)])

    # --- E: change a config value (the first Edit may miss) --------------------------------
    CONFIGS = [
        ("server", "port", "8080", ["9090", "8000", "5000"]),
        ("server", "workers", "2", ["4", "8"]),
        ("logging", "level", "info", ["debug", "warning"]),
        ("cache", "ttl_seconds", "300", ["600", "60"]),
        ("database", "pool_size", "5", ["10", "20"]),
    ]

    def config_change(self, miss: bool) -> Session:
        pkg, tagline = self.package()
        project = layout(self.project_dir("config"), pkg, tagline, self.rng.sample(BUGS, 1))
        file_name = self.pick(["settings.ini", "app.ini", "service.ini"])
        config = _write(project.root / "config" / file_name, _dedent('''
            [server]
            host = 127.0.0.1
            port = 8080
            workers = 2

            [logging]
            level = info

            [cache]
            ttl_seconds = 300

            [database]
            pool_size = 5
            '''))
        section, key, old, values = self.pick(self.CONFIGS)
        value = self.pick(values)
        rel = f"config/{file_name}"
        prompt = self.prompt([
            f"Set {key} to {value} in {rel}.",
            f"Change the {section} {key} from {old} to {value} in the {pkg} config.",
            f"Can you update {rel} so that [{section}] {key} is {value}?",
        ])
        check = (f"python3 -c \"import configparser; c = configparser.ConfigParser(); c.read('{rel}'); "
                 f"print(c['{section}']['{key}'])\"")
        script: Script = [[thinking(f"Let me read {rel} first to see its exact format."),
                           tool_use("Read", {"file_path": str(config)})]]
        errors = [False]
        if miss:
            script += [
                [text(f"Updating `{key}`."),
                 tool_use("Edit", {"file_path": str(config), "old_string": f"{key}={old}", "new_string": f"{key}={value}"})],
                [thinking(f"The edit failed: the file puts spaces around '='. Actually, let me retry with the exact text "
                          f"`{key} = {old}`."),
                 tool_use("Edit", {"file_path": str(config), "old_string": f"{key} = {old}", "new_string": f"{key} = {value}"})],
            ]
            errors += [True, False]
        else:
            script += [[text(f"Changing `{key} = {old}` to `{key} = {value}`."),
                        tool_use("Edit", {"file_path": str(config), "old_string": f"{key} = {old}",
                                          "new_string": f"{key} = {value}"})]]
            errors += [False]
        script += [
            [text("Let me make sure the file still parses and has the new value."),
             tool_use("Bash", {"command": check, "description": "Parse the config and print the value"})],
            [text(f"`{rel}` now has `{key} = {value}` in `[{section}]`, and it parses.")],
        ]
        scenarios = [Scenario("config-miss" if miss else "config", prompt, script, errors + [False])]
        if self.maybe(0.3):
            other_section, other_key, other_old, other_values = self.pick([c for c in self.CONFIGS if c[1] != key])
            other_value = self.pick(other_values)
            follow = self.prompt([f"Also set {other_key} to {other_value} while you're at it.",
                                f"And change {other_key} to {other_value} too, please."])
            scenarios.append(Scenario("follow-up-config", follow, [
                [thinking(f"Let me read {rel} again before editing {other_key}; it may have changed since."),
                 tool_use("Read", {"file_path": str(config)})],
                [text(f"Now I'll change `{other_key} = {other_old}`."),
                 tool_use("Edit", {"file_path": str(config), "old_string": f"{other_key} = {other_old}",
                                   "new_string": f"{other_key} = {other_value}"})],
                [text(f"Done: `[{other_section}] {other_key} = {other_value}` in `{rel}`.")],
            ]))
        return Session(project.root.name, project.root, scenarios)

    # --- F: a command fails, then the right one --------------------------------------------
    def failed_command(self) -> Session:
        pkg, tagline = self.package()
        bug = self.pick([b for b in BUGS if b.module in ("cart", "pricing", "invoice", "stats", "units", "geometry")])
        project = layout(self.project_dir("run-script"), pkg, tagline, self.bugs(bug, 1))
        script_name = self.pick(["report.py", "summary.py", "show_totals.py"])
        call = {
            "cart": (f"from {pkg}.cart import cart_total\n\nITEMS = [{{'price': 4.25, 'qty': 2}}, {{'price': 1.5, 'qty': 3}}]\n"
                     "print(f'Cart total: {cart_total(ITEMS):.2f}')\n", "Cart total: 13.00"),
            "pricing": (f"from {pkg}.pricing import apply_discount\n\nprint(f'Sale price: {{apply_discount(80.0, 25):.2f}}')\n",
                        "Sale price: 60.00"),
            "invoice": (f"from {pkg}.invoice import add_tax, line_total\n\nnet = line_total(3, 12.5)\n"
                        "print(f'Net {net:.2f}, gross {add_tax(net, 0.2):.2f}')\n", "Net 37.50, gross 45.00"),
            "stats": (f"from {pkg}.stats import mean, spread\n\nscores = [12, 15, 9, 20]\n"
                      "print(f'mean={mean(scores)} spread={spread(scores)}')\n", "mean=14.0 spread=11"),
            "units": (f"from {pkg}.units import km_to_miles\n\nfor km in (5, 10, 21.1):\n"
                      "    print(f'{km} km = {km_to_miles(km):.1f} mi')\n", "5 km = 3.1 mi"),
            "geometry": (f"from {pkg}.geometry import circle_area, rectangle_area\n\n"
                         "print(f'circle {circle_area(1.5):.2f}, rectangle {rectangle_area(2, 7)}')\n", "circle 7.07, rectangle 14"),
        }[bug.module]
        script_path = _write(project.root / "scripts" / script_name, call[0])
        prompt = self.prompt([
            f"Run scripts/{script_name} and tell me what it prints.",
            f"What does the {script_name.removesuffix('.py')} script of {pkg} output at the moment?",
            f"Can you execute the {pkg} {script_name} script and report the result?",
            f"I'd like to see the output of {script_name} in {pkg}. Run it for me?",
            f"Please try running {pkg}'s {script_name} helper; what numbers does it give?",
        ])
        wrong_dir = self.maybe(0.4)
        if wrong_dir:
            script: Script = [
                [text("Running it."),
                 tool_use("Bash", {"command": f"python3 {script_name}", "description": f"Run {script_name}"})],
                [thinking(f"It is not in the project root. Let me find where {script_name} lives."),
                 tool_use("Glob", {"pattern": f"**/{script_name}", "path": str(project.root)})],
                [thinking(f"It's in scripts/, and it imports {pkg} from src/, so src must be on PYTHONPATH."),
                 tool_use("Bash", {"command": f"PYTHONPATH=src python3 scripts/{script_name}",
                                   "description": f"Run {script_name} with src on the path"})],
            ]
            errors = [True, False, False]
        else:
            script = [
                [thinking("Let me just run it from the project root."),
                 tool_use("Bash", {"command": f"python3 scripts/{script_name}", "description": f"Run {script_name}"})],
                [thinking(f"ModuleNotFoundError: {pkg} lives in src/ and is not installed. Instead of installing it, "
                          "I'll put src on PYTHONPATH for this run."),
                 tool_use("Bash", {"command": f"PYTHONPATH=src python3 scripts/{script_name}",
                                   "description": f"Run {script_name} with src on the path"})],
            ]
            errors = [True, False]
        script.append([text(f"`scripts/{script_name}` prints `{call[1]}`{' (among other lines)' if bug.module == 'units' else ''}. "
                            f"It needs `PYTHONPATH=src` (or `pip install -e .`) because {pkg} uses a src layout.")])
        del script_path
        return Session(project.root.name, project.root, [Scenario("failed-command", prompt, script, errors)])

    # --- G: compare two files (parallel reads) ---------------------------------------------
    ENVIRONMENTS = [("staging", "production"), ("dev", "prod"), ("local", "ci"), ("test", "release")]

    def compare(self) -> Session:
        pkg, tagline = self.package()
        project = layout(self.project_dir("compare"), pkg, tagline, self.rng.sample(BUGS, 1))
        a_name, b_name = self.pick(self.ENVIRONMENTS)
        ext = self.pick(["ini", "toml", "env"])
        same = self.maybe(0.25)
        a_lines = [f"debug = {'true' if a_name in ('dev', 'local', 'test') else 'false'}", "workers = 2", "timeout = 30",
                   f"database = {pkg}_{a_name}"]
        b_lines = list(a_lines) if same else ["debug = false", f"workers = {self.pick([4, 8])}", "timeout = 30",
                                              f"database = {pkg}_{b_name}"]
        a = _write(project.root / "config" / f"{a_name}.{ext}", "\n".join(a_lines) + "\n")
        b = _write(project.root / "config" / f"{b_name}.{ext}", "\n".join(b_lines if not same else a_lines) + "\n")
        prompt = self.prompt([
            f"What's the difference between config/{a_name}.{ext} and config/{b_name}.{ext} in {pkg}?",
            f"Compare the {a_name} and {b_name} configs of {pkg} for me.",
            f"Are config/{a_name}.{ext} and config/{b_name}.{ext} of {pkg} in sync?",
            f"Did someone change the {b_name} settings of {pkg}? Check them against {a_name}.",
            f"Tell me how {pkg}'s {b_name} configuration differs from the {a_name} one.",
        ])
        diff = [l_b for l_a, l_b in zip(a_lines, b_lines) if l_a != l_b]
        answer = ("The two files are identical." if same else
                  f"They differ in {len(diff)} setting(s): " + "; ".join(f"`{l}` in {b_name}" for l in diff) + ". The rest is the same.")
        script: Script = [
            [text("Reading both files at once."),
             tool_use("Read", {"file_path": str(a)}), tool_use("Read", {"file_path": str(b)})],
            [thinking("Let me confirm with diff so I don't miss a whitespace-only change."),
             tool_use("Bash", {"command": f"diff -u config/{a_name}.{ext} config/{b_name}.{ext}", "description": "Diff the two configs"})],
            [text(answer)],
        ]
        # Claude Code does not count diff's exit status 1 ("the files differ") as a failure.
        return Session(project.root.name, project.root, [Scenario("compare", prompt, script)])

    # --- H: find TODO comments ---------------------------------------------------------------
    TODOS = [
        "TODO: handle negative amounts", "TODO: cache this lookup", "TODO: validate the input type",
        "TODO: remove after the 1.0 release", "TODO: this is slow for big lists", "TODO: log a warning here",
        "TODO(security): escape user input before using it", "TODO: support time zones",
    ]

    def todos(self) -> Session:
        pkg, tagline = self.package()
        bugs = self.rng.sample(BUGS, 2)
        project = layout(self.project_dir("todos"), pkg, tagline, bugs)
        notes = self.rng.sample(self.TODOS, 3)
        urgent = next((n for n in notes if "security" in n), notes[0])
        placements = []
        for bug, note in zip([bugs[0], bugs[1], bugs[0]], notes):
            path = project.src(bug.module)
            path.write_text(path.read_text() + f"\n\n# {note}\n")
            placements.append((path, note))
        urgent_path = next(p for p, n in placements if n == urgent)
        prompt = self.prompt([
            f"List the TODO comments in {pkg} and tell me which one matters most.",
            f"Which TODOs are left in the {pkg} code? Pick the one I should do first.",
            f"Find the open TODO notes in the {pkg} sources and prioritise them.",
        ])
        script: Script = [
            [thinking("Search the sources for TODO markers, with line numbers."),
             tool_use("Grep", {"pattern": "TODO", "path": str(project.root / "src"), "output_mode": "content", "-n": True})],
            [text(f"Three TODOs. Let me read `{self.rel(project, urgent_path)}` to judge the one that looks most important in context."),
             tool_use("Read", {"file_path": str(urgent_path)})],
            [text("Open TODOs: " + "; ".join(f"`{n}` ({self.rel(project, p)})" for p, n in placements)
                  + f". I'd do `{urgent}` first.")],
        ]
        return Session(project.root.name, project.root, [Scenario("todos", prompt, script)])

    # --- I: size of the code ---------------------------------------------------------------
    def count_lines(self) -> Session:
        pkg, tagline = self.package()
        bugs = self.rng.sample(BUGS, self.pick([2, 3]))
        project = layout(self.project_dir("size"), pkg, tagline, bugs)
        prompt = self.prompt([
            f"How many lines of Python are in src/{pkg}?",
            f"Which module of {pkg} is the biggest?",
            f"How big is the {pkg} code base, roughly? Count the source lines.",
        ])
        files = sorted(project.src(b.module) for b in bugs)
        counts = {p: len(p.read_text().splitlines()) for p in files}
        init_lines = len((project.root / "src" / pkg / "__init__.py").read_text().splitlines())
        total = sum(counts.values()) + init_lines
        biggest = max(counts, key=counts.get)
        script: Script = [
            [thinking("Let me find the source files first."),
             tool_use("Glob", {"pattern": "src/**/*.py", "path": str(project.root)})],
            [text("Now I'll count the lines of each file with wc."),
             tool_use("Bash", {"command": f"wc -l src/{pkg}/*.py", "description": "Count lines per file"})],
            [text(f"`src/{pkg}` has {total} lines of Python in {len(files) + 1} files; the biggest is "
                  f"`{self.rel(project, biggest)}` ({counts[biggest]} lines).")],
        ]
        return Session(project.root.name, project.root, [Scenario("size", prompt, script)])

    # --- J: add a test ---------------------------------------------------------------------
    def add_test(self, bug: Bug) -> Session:
        pkg, tagline = self.package()
        project = layout(self.project_dir("add-test"), pkg, tagline, self.bugs(bug, 1))
        src, test = project.src(bug.module), project.test(bug.module)
        test_rel = self.rel(project, test)
        prompt = self.prompt([
            f"Add a unit test for {bug.func} that covers {bug.edge_desc}.",
            f"Write a test in {test_rel} for {bug.edge_desc}.",
            f"We have no test for {bug.edge_desc} in {bug.func}. Add one, please.",
        ])
        last_line = _dedent(bug.tests).replace("{pkg}", pkg).rstrip("\n").splitlines()[-1]
        script: Script = [
            [thinking(f"I'll read {bug.func} and its existing tests together, so the new test fits in."),
             tool_use("Read", {"file_path": str(src)}), tool_use("Read", {"file_path": str(test)})],
            [text(f"Appending a test for {bug.edge_desc}."),
             tool_use("Edit", {"file_path": str(test), "old_string": last_line,
                               "new_string": last_line + _edge_addition(bug)})],
            [text("Running the test file."),
             tool_use("Bash", {"command": pytest_cmd(test_rel), "description": "Run the tests"})],
            [text(f"Added a test for {bug.edge_desc} in `{test_rel}`; it passes along with the existing ones.")],
        ]
        return Session(project.root.name, project.root, [Scenario("add-test", prompt, script)])

    # --- K: write a new script -------------------------------------------------------------
    def new_script(self) -> Session:
        pkg, tagline = self.package()
        bug = self.pick([b for b in BUGS if b.module in ("temperature", "units", "durations", "text", "calendar_utils")])
        project = layout(self.project_dir("new-script"), pkg, tagline, self.bugs(bug, 1))
        name = self.pick(["table", "demo", "print_examples"])
        body, expected = {
            "temperature": (f"from {pkg}.temperature import celsius_to_fahrenheit\n\nfor c in (-10, 0, 25, 100):\n"
                            "    print(f'{c:>4} C = {celsius_to_fahrenheit(c):6.1f} F')\n", "a Celsius/Fahrenheit table"),
            "units": (f"from {pkg}.units import km_to_miles\n\nfor km in (1, 5, 10, 42.195):\n"
                      "    print(f'{km:>7} km = {km_to_miles(km):6.2f} mi')\n", "a kilometre/mile table"),
            "durations": (f"from {pkg}.durations import format_minutes\n\nfor minutes in (5, 59, 60, 135):\n"
                          "    print(minutes, '->', format_minutes(minutes))\n", "example durations"),
            "text": (f"from {pkg}.text import slugify\n\nfor title in ('Hello World', 'Release Notes 2.0'):\n"
                     "    print(title, '->', slugify(title))\n", "example slugs"),
            "calendar_utils": (f"from {pkg}.calendar_utils import days_in_year\n\nfor year in (1900, 2000, 2023, 2024):\n"
                               "    print(year, days_in_year(year))\n", "the number of days in a few years"),
        }[bug.module]
        target = project.root / "scripts" / f"{name}.py"
        prompt = self.prompt([
            f"Add a script scripts/{name}.py that prints {expected}.",
            f"I need a small command-line script that prints {expected} using {pkg}. Put it in scripts/.",
            f"Could you write scripts/{name}.py for {pkg}? It should show {expected}.",
            f"Create a helper script ({name}.py under scripts) printing {expected}.",
        ])
        script: Script = [
            [thinking("Let me look at the layout first to see where scripts go and what the package offers."),
             tool_use("Glob", {"pattern": "**/*.py", "path": str(project.root)})],
            [text(f"`{bug.func}` in `{self.rel(project, project.src(bug.module))}` does the work; reading it."),
             tool_use("Read", {"file_path": str(project.src(bug.module))})],
            [text(f"Writing `scripts/{name}.py`."),
             tool_use("Write", {"file_path": str(target), "content": body})],
            [text("Running it to check the output."),
             tool_use("Bash", {"command": f"PYTHONPATH=src python3 scripts/{name}.py", "description": "Run the new script"})],
            [text(f"Added `scripts/{name}.py`, which prints {expected} with `{bug.func}`. "
                  f"Run it with `PYTHONPATH=src python3 scripts/{name}.py`.")],
        ]
        return Session(project.root.name, project.root, [Scenario("new-script", prompt, script)])

    # --- L: document a function in the README ----------------------------------------------
    def document(self, bug: Bug) -> Session:
        pkg, tagline = self.package()
        project = layout(self.project_dir("docs"), pkg, tagline, self.bugs(bug, 1))
        src, readme = project.src(bug.module), project.root / "README.md"
        prompt = self.prompt([
            f"Document {bug.func} in the README with a short example.",
            f"The README of {pkg} doesn't mention {bug.func}. Add a section about it.",
        ])
        example = {
            "apply_discount": "apply_discount(50.0, 10)  # 45.0",
            "celsius_to_fahrenheit": "celsius_to_fahrenheit(100)  # 212.0",
            "mean": "mean([2, 4, 6])  # 4.0",
            "slugify": 'slugify("Hello World")  # "hello-world"',
            "cart_total": 'cart_total([{"price": 2.5, "qty": 4}])  # 10.0',
            "is_leap_year": "is_leap_year(2024)  # True",
            "letter_grade": 'letter_grade(85)  # "B"',
            "truncate": 'truncate("abcdef", 3)  # "abc..."',
            "format_minutes": 'format_minutes(135)  # "2h 15m"',
            "circle_area": "circle_area(3)  # 28.27...",
            "add_tax": "add_tax(100, 0.2)  # 120.0",
            "pop_oldest": 'pop_oldest(["a", "b"])  # "a"',
            "km_to_miles": "km_to_miles(10)  # 6.21...",
        }[bug.func]
        section = (f"    pytest -q\n\n## `{bug.func}`\n\n    from {pkg}.{bug.module} import {bug.func}\n\n"
                   f"    {example}\n")
        script: Script = [
            [thinking(f"Let me find {bug.func} first, with line numbers."),
             tool_use("Grep", {"pattern": f"def {bug.func}", "path": str(project.root), "output_mode": "content", "-n": True})],
            [text("Reading the README and the function, so the example is right."),
             tool_use("Read", {"file_path": str(readme)}), tool_use("Read", {"file_path": str(src)})],
            [text(f"Adding a `{bug.func}` section after Usage."),
             tool_use("Edit", {"file_path": str(readme), "old_string": "    pytest -q\n", "new_string": section})],
            [text(f"The README now documents `{bug.func}` (import path and an example) after the Usage section.")],
        ]
        return Session(project.root.name, project.root, [Scenario("docs", prompt, script)])


def build_sessions(root: Path, seed: int = 7) -> list[Session]:
    """Every sample session, laid out under ``root`` (one scratch project each)."""
    b = Builder(root, seed)
    rng = b.rng
    sessions: list[Session] = []
    bugs = list(BUGS)
    rng.shuffle(bugs)
    sessions += [b.fix_from_tests(bug) for bug in bugs[:9]]
    sessions += [b.fix_from_symptom(bug) for bug in bugs[4:12]]
    sessions += [b.explain() for _ in range(7)]
    sessions += [b.rename(bug) for bug in rng.sample(BUGS, 6)]
    sessions += [b.config_change(miss=i % 3 != 2) for i in range(8)]
    sessions += [b.failed_command() for _ in range(7)]
    sessions += [b.compare() for _ in range(6)]
    sessions += [b.todos() for _ in range(6)]
    sessions += [b.count_lines() for _ in range(5)]
    sessions += [b.add_test(bug) for bug in rng.sample(BUGS, 7)]
    sessions += [b.new_script() for _ in range(5)]
    sessions += [b.document(bug) for bug in rng.sample(BUGS, 6)]
    prompts = [s.prompt for session in sessions for s in session.scenarios]
    duplicates = {p for p in prompts if prompts.count(p) > 1}
    if duplicates:
        raise ValueError(f"duplicate prompts (change the seed or the pools): {sorted(duplicates)}")
    return sessions


__all__ = [
    "BUGS",
    "Block",
    "Builder",
    "PromptScriptedAPI",
    "SampleSandbox",
    "Scenario",
    "Session",
    "build_sessions",
]
