"""The leaderboard as one self-contained HTML page: the Markdown rendered with its tables,
the PNGs next to it inlined as data URIs, so the page can be mailed or archived alone.
"""

from __future__ import annotations

import re
from pathlib import Path


def render_html(markdown_text: str, folder: Path) -> str:
    """A self-contained HTML page of the leaderboard: the Markdown rendered, images inlined."""
    import base64
    import html as html_lib

    import markdown as md_lib

    body = md_lib.markdown(markdown_text, extensions=["tables"])

    def inline(match: re.Match) -> str:
        name = html_lib.unescape(match.group(1))
        path = Path(folder) / name
        if "/" in name or not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"]+\.png)"', inline, body)
    title = next(
        (line[2:] for line in markdown_text.splitlines() if line.startswith("# ")), "Leaderboard"
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html_lib.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 75rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.45; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1.25rem; font-size: 0.9rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.5rem; }}
th {{ background: #f3f3f3; }}
tr:nth-child(even) td {{ background: #fafafa; }}
td[style*="right"], th[style*="right"] {{ font-variant-numeric: tabular-nums; }}
img {{ max-width: 100%; height: auto; }}
code {{ background: #f3f3f3; padding: 0 0.2rem; }}
blockquote {{ border-left: 4px solid #d9534f; margin: 0; padding: 0.25rem 1rem; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""
