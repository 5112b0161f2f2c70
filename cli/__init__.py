"""The command line: `python restore_faces.py --input photo.jpg` restores every face in image files, folders,
videos and frame sequences, on the same pipeline as the ComfyUI nodes (`face_utils.pipeline`).

Rooms: `main` (the options, checked before anything heavy is imported), `jobs` (what is read and written),
`restore` (one function per job kind: aligned crops, photos, frame sequences), `frame_jobs` (videos and
`--sequence` folders), `image_files` and `video_files` (reading and writing), `progress` (the status line).
"""
