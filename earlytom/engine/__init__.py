"""The engine directory (DESIGN.md section 5) in one place: its file names and vision graphs (`layout`), its
typed manifest with read / write / verify (`manifest`), the staged write that puts it in place (`staging`), the
sizes it implies (`sizes`), the graphs as modules over a backbone (`stretch`), ONNX Runtime sessions over its
graphs (`sessions`), and `open_dir`, which verifies a directory once and gives the backends what they read
(`directory`). The builder writes it and the runtime reads it through this package only."""
