"""Tables and figures of results, and the published numbers printed beside ours."""
