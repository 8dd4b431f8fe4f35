"""Where streams come from: files and stdin, and the State of the Union demo corpus."""
