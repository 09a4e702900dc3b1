"""Analyst reads (issue 14): pure planning and shaping of aggregate and raw reads.

buckets: bucket sizes and time zones; rollup_choice: which rollup serves which part of a
range; fill: gap filling; lttb: downsampling; cursor: keyset cursors. The SQL they plan is
in backend/store/ (aggregates.py, queries.py).
"""
