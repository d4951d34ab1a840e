"""Deterministic, realistic sandbox data.

:class:`DataFactory` turns a seed into people, companies, tickets and invoices that look
like a small business's: varied names (some non-ASCII), unique emails on reserved domains
(``.example``, ``example.com``), phone numbers in fictional ranges, exact ``Decimal``
amounts, and timestamps spread over the ~90 days before a fixed anchor. About a fifth of
the rows share their whole-second ``updated_at`` with neighbours (a bulk import, a mass
status change), which is what makes compound ``(updated_at, id)`` cursors necessary.

The same seed gives the same data, byte for byte, on every machine and Python run. The
bulk methods build columns with :meth:`random.Random.choices`, so a million rows take
about a second or two rather than a minute.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import repeat
from typing import Any, TypeVar

__all__ = ["ANCHOR", "DataFactory"]

_T = TypeVar("_T")

ANCHOR = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)
"""Generated ``updated_at`` values lie in the ``span`` (90 days) before this instant."""

FIRST_NAMES = (
    "Olivia", "Liam", "Emma", "Noah", "Amelia", "Oliver", "Ava", "Elijah", "Sophia", "James",
    "Isabella", "William", "Mia", "Benjamin", "Charlotte", "Lucas", "Harper", "Henry", "Evelyn",
    "Theodore", "Aisha", "Mohammed", "Fatima", "Omar", "Priya", "Arjun", "Ananya", "Rahul", "Mei",
    "Wei", "Yuki", "Haruto", "Sakura", "Min-jun", "Ji-woo", "Chloé", "Léa", "José", "María",
    "Lucía", "Mateo", "Sofía", "Zoë", "Björn", "Søren", "Ingrid", "Łukasz", "Zofia", "Jan",
    "Katarzyna", "Dmitri", "Anastasia", "Ivan", "Olga", "Chidi", "Amara", "Kwame", "Ngozi",
    "Thandiwe", "Sipho", "Aroha", "Tane", "Siobhán", "Niamh", "Cian", "Eilidh", "Rhys", "Megan",
    "Gareth", "Fiona", "Grace", "Daniel", "Hannah", "David", "Sarah", "Michael", "Laura",
    "Thomas", "Julia", "Samuel", "Rachel", "Joseph", "Naomi", "Leon", "Hanna", "Felix", "Clara",
    "Jonas", "Marta", "Pedro", "Ana", "Gabriel", "Beatriz", "Rafael", "Camila", "Diego", "Valentina",
)  # fmt: skip

LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernández", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor",
    "Moore", "Jackson", "Martin", "Lee", "Pérez", "Thompson", "White", "Harris", "Clark",
    "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Nguyen", "Hill",
    "Flores", "Green", "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell",
    "Carter", "Roberts", "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner",
    "Becker", "Nowak", "Kowalski", "Wiśniewski", "Novák", "Svoboda", "Jensen", "Nielsen",
    "Hansen", "Andersson", "Johansson", "Larsen", "Virtanen", "Korhonen", "Dubois", "Lefèvre",
    "Moreau", "Rossi", "Russo", "Ferrari", "Esposito", "Silva", "Santos", "Oliveira", "Costa",
    "Ivanov", "Petrova", "Sato", "Suzuki", "Takahashi", "Tanaka", "Kim", "Park", "Choi",
    "Wang", "Li", "Zhang", "Chen", "Singh", "Patel", "Sharma", "Khan", "Okafor", "Mensah",
    "O'Brien", "MacDonald", "Murphy", "Kelly", "Byrne", "Evans", "Hughes", "Ngata",
)  # fmt: skip

COMPANY_WORDS = (
    "Acme", "Northwind", "Bluebird", "Riverside", "Summit", "Harbor", "Pinecrest", "Granite",
    "Beacon", "Cedar", "Copperleaf", "Driftwood", "Evergreen", "Foxglove", "Golden Gate",
    "Highland", "Ironbridge", "Juniper", "Keystone", "Lakeside", "Meadow", "Nimbus", "Oakridge",
    "Pioneer", "Quarry", "Redwood", "Silverline", "Tidewater", "Upland", "Vantage", "Willow",
    "Yellowstone", "Zephyr", "Brightwater", "Stonegate", "Kestrel", "Lantern", "Orchard",
)  # fmt: skip
COMPANY_TRADES = (
    "Logistics", "Hosting", "Analytics", "Dental", "Bakery", "Consulting", "Design", "Labs",
    "Networks", "Outfitters", "Partners", "Software", "Studios", "Systems", "Travel", "Media",
    "Motors", "Health", "Legal", "Realty", "Energy", "Foods", "Security", "Supply",
)  # fmt: skip
COMPANY_SUFFIXES = ("Ltd", "LLC", "Inc.", "GmbH", "Co.", "", "", "", "S.A.", "Pty Ltd", "AB")

TITLES = (
    "Office Manager", "CEO", "CTO", "Accountant", "IT Administrator", "Operations Lead",
    "Sales Director", "Support Engineer", "Founder", "Bookkeeper", "Project Manager",
    "Marketing Manager", "Head of Finance", "Developer", "Receptionist", "", "",
)  # fmt: skip

PLACES = (
    ("London", "GB"), ("Manchester", "GB"), ("Dublin", "IE"), ("New York", "US"), ("Austin", "US"),
    ("Seattle", "US"), ("Toronto", "CA"), ("Berlin", "DE"), ("München", "DE"), ("Paris", "FR"),
    ("Lyon", "FR"), ("Madrid", "ES"), ("Lisboa", "PT"), ("Milano", "IT"), ("Amsterdam", "NL"),
    ("København", "DK"), ("Stockholm", "SE"), ("Kraków", "PL"), ("Praha", "CZ"), ("Sydney", "AU"),
    ("Auckland", "NZ"), ("Cape Town", "ZA"), ("Lagos", "NG"), ("São Paulo", "BR"), ("Tokyo", "JP"),
    ("Seoul", "KR"), ("Singapore", "SG"), ("Bengaluru", "IN"),
)  # fmt: skip

PRODUCTS = (
    "the control panel", "webmail", "the VPS", "the shared hosting account", "the mobile app",
    "the billing portal", "the API", "the WordPress site", "the SSL certificate", "the VPN",
    "the backup service", "the DNS zone", "the mailbox", "the online store", "the dashboard",
)  # fmt: skip

SUBJECTS = (
    "Cannot log in to {product}",
    "{Product} is very slow since this morning",
    "Invoice #{number} charged twice",
    "Refund request for order {number}",
    "How do I change my billing address?",
    "Password reset email never arrives",
    "{Product} returns error 500",
    "Upgrade to the {plan} plan",
    "Domain renewal failed",
    "Emails bouncing back from {product}",
    "Question about invoice {number}",
    "Please cancel my subscription",
    "SSL certificate expired on our site",
    "Add a new user to our account",
    "Data export request",
    "Downtime last night?",
    "Wrong VAT on invoice {number}",
    "Re: follow-up on ticket {number}",
    "Feature request: dark mode for {product}",
    "Migrating from our old provider",
)  # fmt: skip

SENTENCES = (
    "Since yesterday {product} does not respond at all.",
    "We tried clearing the cache and restarting, without luck.",
    "This is blocking our whole team, please treat it as urgent.",
    "The error appears right after entering the password.",
    "Could you tell us what changed on your side?",
    "I have attached a screenshot of the message.",
    "Our accountant noticed the amount does not match the quote.",
    "Please confirm once this has been fixed.",
    "It worked fine until the maintenance window on Sunday.",
    "We need this sorted before the end of the month.",
    "Several customers have reported the same problem.",
    "Thanks in advance for your help!",
    "Is there a way to do this ourselves from {product}?",
    "The issue only happens on mobile devices.",
    "Let me know if you need access to our account.",
)  # fmt: skip

PLANS = ("Starter", "Business", "Pro", "Enterprise", "Reseller")

TICKET_STATUSES = ("open", "pending", "closed")
TICKET_STATUS_WEIGHTS = (40, 20, 40)
PRIORITIES = ("low", "normal", "high", "urgent")
PRIORITY_WEIGHTS = (25, 50, 20, 5)
CURRENCIES = ("USD", "EUR", "GBP")
CURRENCY_WEIGHTS = (70, 15, 15)
INVOICE_STATUSES = ("draft", "open", "paid", "void")
INVOICE_STATUS_WEIGHTS = (10, 30, 55, 5)

FREE_DOMAINS = ("example.com", "example.net", "example.org")
_TRANSLIT = str.maketrans({"ł": "l", "Ł": "L", "ø": "o", "Ø": "O", "ß": "ss", "æ": "ae", "'": ""})


_LEGAL_SUFFIXES = tuple(s for s in COMPANY_SUFFIXES if s)


def company_domain(company: str) -> str:
    """The reserved-TLD domain a company's staff have mail at (``Acme Hosting Ltd`` -> ``acme-hosting.example``)."""
    base = company
    for suffix in _LEGAL_SUFFIXES:
        if base.endswith(" " + suffix):
            base = base[: -len(suffix) - 1]
            break
    return slug(base, "-") + ".example"


def slug(text: str, sep: str = "") -> str:
    """ASCII lowercase letters and digits of ``text`` (``"Łukasz O'Brien"`` -> ``"lukaszobrien"``)."""
    plain = unicodedata.normalize("NFKD", text.translate(_TRANSLIT)).encode("ascii", "ignore").decode()
    words = ["".join(ch for ch in word if ch.isalnum()) for word in plain.lower().split()]
    return sep.join(w for w in words if w)


class DataFactory:
    """Realistic records from a seed. The same seed (and the same calls) give the same data.

    Emails are unique across everything one factory hands out. ``anchor`` and ``span`` place
    the generated ``updated_at`` values; ``cluster_share`` is the fraction of rows that share
    their whole-second ``updated_at`` with others.
    """

    def __init__(
        self,
        seed: int = 1,
        *,
        anchor: datetime = ANCHOR,
        span: timedelta = timedelta(days=90),
        history: timedelta = timedelta(days=730),
        cluster_share: float = 0.2,
    ) -> None:
        self.seed = seed
        self.anchor = anchor
        self.span = span
        self.history = history
        self.cluster_share = cluster_share
        self.rng = random.Random(seed)
        self._emails: set[str] = set()
        self._email_next: dict[str, int] = {}
        self._companies: list[str] | None = None
        self._pools: dict[str, list[Any]] = {}

    # -- single values ---------------------------------------------------------------
    def first_name(self) -> str:
        """A given name."""
        return self.rng.choice(FIRST_NAMES)

    def last_name(self) -> str:
        """A family name."""
        return self.rng.choice(LAST_NAMES)

    def company(self) -> str:
        """A company name from a fixed pool of a few hundred (so people share employers)."""
        return self.rng.choice(self.companies())

    def companies(self) -> list[str]:
        """The pool of company names this factory draws from."""
        if self._companies is None:
            # A separate RNG keeps the pool identical however many other values were drawn.
            rng = random.Random(f"companies:{self.seed}")
            names = sorted(
                {
                    " ".join(
                        w
                        for w in (rng.choice(COMPANY_WORDS), rng.choice(COMPANY_TRADES), rng.choice(COMPANY_SUFFIXES))
                        if w
                    )
                    for _ in range(400)
                }
            )
            self._companies = names
        return self._companies

    def email(self, first: str, last: str, company: str | None = None) -> str:
        """A unique address for a person: ``first.last@company.example`` or a free-mail one."""
        use_company = company and self.rng.random() < 0.7
        domain = company_domain(company) if company and use_company else self.rng.choice(FREE_DOMAINS)
        return self._unique_email(f"{slug(first)}.{slug(last)}", domain)

    def _unique_email(self, local: str, domain: str) -> str:
        address = f"{local}@{domain}"
        if address not in self._emails:
            self._emails.add(address)
            return address
        n = self._email_next.get(address, 2)
        while f"{local}{n}@{domain}" in self._emails:
            n += 1
        self._email_next[address] = n + 1
        address = f"{local}{n}@{domain}"
        self._emails.add(address)
        return address

    def phone(self, *, mobile: bool = False) -> str:
        """A phone number in a range set aside for fiction (US 555-01xx, UK 07700 900xxx, AU 0491 570xxx)."""
        rng = self.rng
        if mobile:
            return f"+44 7700 900{rng.randint(0, 999):03d}"
        form = rng.randrange(3)
        if form == 0:
            return f"+1 {rng.randint(201, 989)}-555-01{rng.randint(0, 99):02d}"
        if form == 1:
            return f"+44 20 7946 0{rng.randint(0, 999):03d}"
        return f"+61 491 570 {rng.randint(100, 999)}"

    def subject(self) -> str:
        """A ticket subject line."""
        rng = self.rng
        product = rng.choice(PRODUCTS)
        return rng.choice(SUBJECTS).format(
            product=product,
            Product=product[0].upper() + product[1:],
            number=rng.randint(1000, 99999),
            plan=rng.choice(PLANS),
        )

    def description(self) -> str:
        """Two to four sentences of a customer's message."""
        rng = self.rng
        product = rng.choice(PRODUCTS)
        count = rng.randint(2, 4)
        return " ".join(s.format(product=product) for s in rng.sample(SENTENCES, count))

    def amount(self, low: Decimal = Decimal("15.00"), high: Decimal = Decimal("4800.00")) -> Decimal:
        """An exact money amount with two decimals between ``low`` and ``high``."""
        cents = self.rng.randint(int(low * 100), int(high * 100))
        return Decimal(cents).scaleb(-2)

    def _invoice_amount(self) -> Decimal:
        # Skewed towards small bills, as a small business's invoices are: 15.00 .. 4815.00.
        return Decimal(1500 + int(480_000 * self.rng.random() ** 3)).scaleb(-2)

    # -- bulk ------------------------------------------------------------------------
    def timeline(self, n: int) -> tuple[list[datetime], list[datetime]]:
        """``created_at`` and ``updated_at`` lists for ``n`` rows in id order.

        ``created_at`` rises with the id over ``history``; ``updated_at`` lies in the
        ``span`` before the anchor, never before ``created_at``, whole seconds, with about
        ``cluster_share`` of rows in runs of 2-8 consecutive ids sharing one second.
        """
        rand = self.rng.random
        anchor_s = int(self.anchor.timestamp())
        window_s = anchor_s - int(self.span.total_seconds())
        first_s = anchor_s - int(self.history.total_seconds())
        step = (anchor_s - first_s - 60) / max(n, 1)
        created = [first_s + int((i + rand()) * step) for i in range(n)]
        updated = [0] * n
        cluster_start = self.cluster_share / 5  # mean cluster size is 5
        i = 0
        while i < n:
            if rand() < cluster_start:
                size = min(2 + int(rand() * 7), n - i)
                low = max(window_s, created[i + size - 1])
                second = low + int(rand() * (anchor_s - low + 1))
                updated[i : i + size] = [second] * size
                i += size
            else:
                low = created[i] if created[i] > window_s else window_s
                updated[i] = low + int(rand() * (anchor_s - low + 1))
                i += 1
        utc = repeat(UTC)
        return list(map(datetime.fromtimestamp, created, utc)), list(map(datetime.fromtimestamp, updated, utc))

    def stamp(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Set ``created_at`` and ``updated_at`` on ``rows`` (in id order) from :meth:`timeline`."""
        created, updated = self.timeline(len(rows))
        for row, c, u in zip(rows, created, updated, strict=True):
            row["created_at"] = c
            row["updated_at"] = u
        return rows

    def people(self, n: int) -> list[dict[str, Any]]:
        """``n`` people: ``first_name``, ``last_name``, ``email`` (unique), ``phone``, ``mobile``
        (or None), ``title`` (or None), ``company``, ``city``, ``country``, ``created_at``,
        ``updated_at``."""
        rng = self.rng
        rand = rng.random
        companies = [(name, company_domain(name)) for name in self.companies()]
        emails = self._emails
        people: list[dict[str, Any]] = []
        append = people.append
        phones = self._pool("phones", self.phone)
        mobiles = self._pool("mobiles", lambda: self.phone(mobile=True))
        created, updated = self.timeline(n)
        for (first, first_slug), (last, last_slug), (company, company_dom), title, place, phone, mobile, c, u in zip(
            rng.choices(_FIRST, k=n),
            rng.choices(_LAST, k=n),
            rng.choices(companies, k=n),
            rng.choices(TITLES, k=n),
            rng.choices(PLACES, k=n),
            rng.choices(phones, k=n),
            rng.choices(mobiles, k=n),
            created,
            updated,
            strict=True,
        ):
            local = first_slug + "." + last_slug
            r = rand()
            domain = FREE_DOMAINS[int(r * 10)] if r < 0.3 else company_dom
            address = local + "@" + domain
            if address in emails:
                address = self._unique_email(local, domain)
            else:
                emails.add(address)
            append(
                {
                    "first_name": first,
                    "last_name": last,
                    "email": address,
                    "phone": phone,
                    "mobile": mobile if r > 0.5 else None,
                    "title": title or None,
                    "company": company,
                    "city": place[0],
                    "country": place[1],
                    "created_at": c,
                    "updated_at": u,
                }
            )
        return people

    def _pool(self, kind: str, make: Callable[[], _T], size: int = 4096) -> list[_T]:
        # Bulk values come from a fixed pool per seed: composing each row's text costs more
        # than everything else together, and real helpdesks repeat themselves anyway.
        pool = self._pools.get(kind)
        if pool is None:
            saved, self.rng = self.rng, random.Random(f"{kind}:{self.seed}")
            try:
                pool = self._pools[kind] = [make() for _ in range(size)]
            finally:
                self.rng = saved
        return pool

    def tickets(self, n: int, requesters: Sequence[str] = ()) -> list[dict[str, Any]]:
        """``n`` tickets: ``subject``, ``description``, ``status`` (open/pending/closed), ``priority``
        (low/normal/high/urgent), ``requester_email`` (from ``requesters``, or None),
        ``created_at``, ``updated_at``."""
        rng = self.rng
        who: Sequence[str | None] = rng.choices(requesters, k=n) if requesters else [None] * n
        created, updated = self.timeline(n)
        return [
            {
                "subject": s,
                "description": d,
                "status": st,
                "priority": p,
                "requester_email": r,
                "created_at": c,
                "updated_at": u,
            }
            for s, d, st, p, r, c, u in zip(
                rng.choices(self._pool("subjects", self.subject), k=n),
                rng.choices(self._pool("descriptions", self.description), k=n),
                rng.choices(TICKET_STATUSES, TICKET_STATUS_WEIGHTS, k=n),
                rng.choices(PRIORITIES, PRIORITY_WEIGHTS, k=n),
                who,
                created,
                updated,
                strict=True,
            )
        ]

    def invoices(self, n: int, customers: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """``n`` invoices: ``number`` (``INV-000001``...), ``customer`` (from ``customers``, or
        None), ``amount`` (exact Decimal, mostly small), ``currency``, ``status``
        (draft/open/paid/void), ``issued_on`` (the day it was created), ``due_on`` (14 or 30
        days on), ``created_at``, ``updated_at``."""
        rng = self.rng
        who: Sequence[Any] = rng.choices(customers, k=n) if customers else [None] * n
        terms = rng.choices((timedelta(days=14), timedelta(days=30)), k=n)
        amounts = self._pool("amounts", self._invoice_amount, 65536)
        created, updated = self.timeline(n)
        invoices: list[dict[str, Any]] = []
        append = invoices.append
        for i, cust, amount, cur, st, term, c, u in zip(
            range(1, n + 1),
            who,
            rng.choices(amounts, k=n),
            rng.choices(CURRENCIES, CURRENCY_WEIGHTS, k=n),
            rng.choices(INVOICE_STATUSES, INVOICE_STATUS_WEIGHTS, k=n),
            terms,
            created,
            updated,
            strict=True,
        ):
            day = c.date()
            append(
                {
                    "number": f"INV-{i:06d}",
                    "customer": cust,
                    "amount": amount,
                    "currency": cur,
                    "status": st,
                    "issued_on": day,
                    "due_on": day + term,
                    "created_at": c,
                    "updated_at": u,
                }
            )
        return invoices


_FIRST = tuple((name, slug(name)) for name in FIRST_NAMES)
_LAST = tuple((name, slug(name)) for name in LAST_NAMES)
