"""Support shared by the tests and the benchmarks: processes, services, media, repositories,
edge servers and fleets. Not part of the installed package; nothing here is imported at run time
by server/, client/ or fleet/."""
