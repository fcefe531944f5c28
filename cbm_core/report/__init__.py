"""Reports for stakeholders and the charts they share with the dashboard.

``explanation_report(pipeline, images, ...)`` and ``model_card(model, ...)`` return a ``Report`` that
writes one self-contained HTML file or a PDF (``Report.save("x.html" | "x.pdf")``). ``figures`` draws
every chart (the pages call the same functions); ``tables`` makes the tables; ``browser`` drives
chromium for static figures and the PDF.
"""
from .export import Report, explanation_report, model_card

__all__ = ["Report", "explanation_report", "model_card"]
