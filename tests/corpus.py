"""A small corpus the tests write themselves (no dependency on ../shared or knowledge/)."""

from __future__ import annotations

from pathlib import Path

PTO_MD = """# Time Off Policy

Acme Widgets gives every full-time employee paid time off.

## Vacation days

Full-time employees get 23 vacation days per year. Unused vacation days, up to 4, carry over until April 30.

## Requesting time off

Request time off in the Beehive portal at least 10 working days ahead. Your manager approves it within 2 days.

## Sick leave

Sick leave is unlimited but anything over 3 consecutive days needs a doctor's note.
"""

ONCALL_MD = """# On-call Runbook

## Severity levels

A SEV1 incident is a full outage of the checkout service. The on-call engineer must acknowledge a SEV1 page within 7 minutes.

## Rollback

To roll back a deploy run `shipit rollback --to previous` and announce it in #deploys.
"""

VPN_HTML = """<!doctype html><html><head><title>VPN setup</title><script>var tracking = 1;</script>
<style>body{color:red}</style></head>
<body><nav>Home | Wiki | Search</nav>
<main><h1>VPN setup</h1>
<p>Install the Tunnelbear Enterprise client from the self-service catalog.</p>
<h2>Connecting</h2>
<ul><li>Choose the gateway vpn.acme.example</li><li>Sign in with your SSO account and approve the MFA push</li></ul>
<table><tr><th>Office</th><th>Gateway</th></tr><tr><td>Berlin</td><td>ber.vpn.acme.example</td></tr></table>
</main><footer>Copyright Acme footer text</footer></body></html>
"""

FAQ_TXT = """Helpdesk FAQ

The helpdesk is reachable at extension 4242 from 8:00 to 18:00 on weekdays.
Password resets are self-service at the Keymaster page.
"""

EXPENSES_PAGES = [
    "Expense Policy. Meals while travelling are reimbursed up to 55 euros per day.",
    "Approvals. Expenses over 800 euros need approval from the finance director Dana Whitfield.",
]


def make_pdf(path: Path, pages: list[str], *, title: str | None = None) -> Path:
    """Write a minimal valid PDF with one text line per page (Helvetica), no library needed."""

    def esc(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    objects: list[bytes] = []
    page_ids = [3 + 2 * i for i in range(len(pages))]
    font_id = 3 + 2 * len(pages)
    info_id = font_id + 1
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = " ".join(f"{pid} 0 R" for pid in page_ids)
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    for i, text in enumerate(pages):
        content_id = page_ids[i] + 1
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 {font_id} 0 R >> >>"
            f" /Contents {content_id} 0 R >>".encode()
        )
        lines = [text[j : j + 80] for j in range(0, len(text), 80)]
        ops = "BT /F1 11 Tf 14 TL 50 740 Td " + " ".join(f"({esc(line)}) Tj T*" for line in lines) + " ET"
        stream = ops.encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    objects.append(f"<< /Title ({esc(title or '')}) >>".encode())
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    trailer = f"<< /Size {len(objects) + 1} /Root 1 0 R" + (f" /Info {info_id} 0 R" if title else "") + " >>"
    out += f"trailer\n{trailer}\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(bytes(out))
    return path


def write_corpus(root: Path) -> Path:
    """hr/pto.md, eng/oncall.md, it/vpn.html, it/faq.txt, finance/expenses.pdf under ``root``."""
    for folder in ("hr", "eng", "it", "finance"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "hr" / "pto.md").write_text(PTO_MD, encoding="utf-8")
    (root / "eng" / "oncall.md").write_text(ONCALL_MD, encoding="utf-8")
    (root / "it" / "vpn.html").write_text(VPN_HTML, encoding="utf-8")
    (root / "it" / "faq.txt").write_text(FAQ_TXT, encoding="utf-8")
    make_pdf(root / "finance" / "expenses.pdf", EXPENSES_PAGES, title="Expense Policy")
    return root
