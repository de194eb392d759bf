"""The engine directory (DESIGN.md section 5) in one place: its file names and vision graphs (`layout`), its
typed manifest with read / write / verify (`manifest`), and the staged write that puts it in place (`staging`).
The builder writes it and the runtime reads it through this package only."""
