"""Scale: where work runs (``executor``: this process, forked processes or Ray tasks), the audit's
quantities as mergeable partials (``partials``) and the streamed audit over Parquet shards (``streaming``)."""
