"""Files in and out: finding inputs, decoding frames, writing and reading the rows."""
