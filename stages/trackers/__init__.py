"""Per-stream multi-object tracking (ultralytics ByteTrack / BoT-SORT) and person crop cutting."""
