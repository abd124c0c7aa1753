-- How many transfers an event carries (a booked bulk's; NULL for every
-- other event, and for events written before this column): projection
-- batches are bounded by transfers as well as by events and bytes
-- (issue #15, item 1), and reading this needs no payload decompressed.
-- Written by the append with the event; a hint for batching only (the
-- hash chain covers the payload it is derived from). Adding a nullable
-- column without a default rewrites nothing.
ALTER TABLE events ADD COLUMN transfer_count integer;
