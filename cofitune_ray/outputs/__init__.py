"""What a finished search leaves behind: result files, the summary and the report."""
