# Fuzzes the guest loader; the seed corpus is the built-in guest ELFs, copied at build time.
get_property(_loader_elfs GLOBAL PROPERTY BATON_GUEST_ELFS)
set(_loader_corpus ${CMAKE_BINARY_DIR}/fuzz/loader_corpus)
set(_loader_stamp ${CMAKE_BINARY_DIR}/fuzz/loader_corpus.stamp)
add_custom_command(OUTPUT ${_loader_stamp}
  COMMAND ${CMAKE_COMMAND} -E make_directory ${_loader_corpus}
  COMMAND ${CMAKE_COMMAND} -E copy ${_loader_elfs} ${_loader_corpus}
  COMMAND ${CMAKE_COMMAND} -E touch ${_loader_stamp}
  DEPENDS ${_loader_elfs} COMMENT "Making the loader fuzz corpus")
add_custom_target(loader_fuzz_corpus ALL DEPENDS ${_loader_stamp})
add_dependencies(loader_fuzz_corpus baton_guest_elfs)
# Smoke run: every input reaches the loader (no checksum); about 1/3 of them load (measured 984 of 3,007).
baton_add_fuzzer(loader_fuzz SOURCES ${CMAKE_CURRENT_LIST_DIR}/loader_fuzz.cpp LIBS baton_guests
                 CORPUS ${_loader_corpus} CORPUS_TARGET loader_fuzz_corpus MIN_REACHED 3000 MIN_DECODED 500)
