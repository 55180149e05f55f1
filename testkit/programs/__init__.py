"""Small programs the tests run as their own process (`python -m testkit.programs.NAME`), where
the test process itself cannot observe what they check (imported modules, a second protobuf
package, a lease holder that is paused with SIGSTOP)."""
