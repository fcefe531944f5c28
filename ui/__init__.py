"""View helpers shared by the dashboard pages: session state, cached resources, plotly figures."""
