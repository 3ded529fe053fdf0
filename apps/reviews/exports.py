"""The access report and closed campaigns as CSV (formula cells neutralised) and PDF
(reportlab). A closed campaign's CSV is frozen text: its export is that text byte for byte,
and its PDF is rendered from it with its SHA-256 printed on every page."""

from __future__ import annotations

import csv
import hashlib
import io

from apps.core.csvsafe import safe_row

REPORT_HEADER = [
    "user", "active", "roles", "effective_permissions", "mfa", "last_login", "last_action_at", "last_action",
    "events", "denied", "failed", "training", "flags",
]  # fmt: skip
CAMPAIGN_HEADER = [
    "campaign_id", "campaign", "user", "role", "scope", "decision", "comment", "reviewer", "decided_at", "result",
    "closed_at", "closed_by",
]  # fmt: skip


def _when(value) -> str:
    return value.isoformat(timespec="seconds") if value else ""


def report_csv_rows(rows):
    """The access report's CSV, a row at a time (header first)."""
    yield REPORT_HEADER
    for r in rows:
        yield safe_row([
            r.user.username, "yes" if r.user.is_active else "no", r.roles_text, r.effective_text,
            "yes" if r.mfa else "no", _when(r.user.last_login), _when(r.last_action_at), r.last_action,
            r.events, r.denied, r.failed, r.training, "; ".join(r.flags),
        ])  # fmt: skip


def to_csv(rows) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerows(rows)
    return out.getvalue()


def campaign_csv(campaign, items) -> str:
    """The campaign's report as CSV text (frozen when it closes)."""
    rows = [CAMPAIGN_HEADER]
    for i in items:
        rows.append(safe_row([
            campaign.pk, campaign.name, i.username, i.role, i.scope_label, i.decision or "undecided", i.comment,
            i.decided_by, _when(i.decided_at), i.applied, _when(campaign.closed_at), campaign.closed_by,
        ]))  # fmt: skip
    return to_csv(rows)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def campaign_pdf(campaign) -> bytes:
    """A closed campaign's frozen report as a PDF: its rows, who closed it and when, and the
    SHA-256 of the frozen CSV."""
    from xml.sax.saxutils import escape

    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    rows = list(csv.reader(io.StringIO(campaign.report_csv)))
    styles = getSampleStyleSheet()
    cell = styles["BodyText"].clone("cell", fontSize=7, leading=8.5)
    head = rows[0] if rows else CAMPAIGN_HEADER
    keep = [head.index(c) for c in ("user", "role", "scope", "decision", "comment", "reviewer", "decided_at", "result")]
    table_rows = [[Paragraph(f"<b>{escape(head[k])}</b>", cell) for k in keep]]
    for row in rows[1:]:
        table_rows.append([Paragraph(escape(row[k]), cell) for k in keep])
    widths = [30 * mm, 18 * mm, 40 * mm, 18 * mm, 60 * mm, 25 * mm, 32 * mm, 40 * mm]
    table = Table(table_rows, colWidths=widths, repeatRows=1)
    table.setStyle(TableStyle([
        ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
        ("BACKGROUND", (0, 0), (-1, 0), colors.lightgrey),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
    ]))  # fmt: skip
    digest = campaign.report_sha256

    def footer(canvas, doc):
        canvas.saveState()
        canvas.setFont("Helvetica", 7)
        canvas.drawString(12 * mm, 8 * mm, f"SHA-256 of the frozen CSV: {digest}   page {doc.page}")
        canvas.restoreState()

    buffer = io.BytesIO()
    doc = SimpleDocTemplate(buffer, pagesize=landscape(A4), leftMargin=12 * mm, rightMargin=12 * mm,
                            topMargin=12 * mm, bottomMargin=15 * mm, title=f"Access review: {campaign.name}",
                            author="hypervisor portal")  # fmt: skip
    story = [
        Paragraph(escape(f"Access review: {campaign.name}"), styles["Title"]),
        Paragraph(escape(f"Started {_when(campaign.started_at)} by {campaign.started_by}; reviewed: "
                         f"{campaign.subjects}. Closed {_when(campaign.closed_at)} by {campaign.closed_by}."),
                  styles["BodyText"]),  # fmt: skip
        Paragraph(escape(f"SHA-256 of the frozen CSV report: {digest}"), styles["BodyText"]),
        Spacer(1, 4 * mm),
        table,
    ]
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buffer.getvalue()
