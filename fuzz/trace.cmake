# Fuzzes the trace reader and the ftrace importer; the seed corpus is the sample ftrace
# captures of tests/traces/data plus their imports as trace files, made at build time.
set(_trace_corpus ${CMAKE_BINARY_DIR}/fuzz/trace_corpus)
set(_trace_samples tracefs-tdp.txt tracecmd-report.txt tracefs-svm.txt malformed.txt)
set(_trace_outputs)
set(_trace_commands COMMAND ${CMAKE_COMMAND} -E make_directory ${_trace_corpus})
foreach(_s ${_trace_samples})
  set(_src ${CMAKE_SOURCE_DIR}/tests/traces/data/${_s})
  list(APPEND _trace_commands COMMAND ${CMAKE_COMMAND} -E copy ${_src} ${_trace_corpus}/${_s})
  list(APPEND _trace_outputs ${_trace_corpus}/${_s})
  # malformed.txt holds a NUL byte among damaged lines; the importer counts and skips them
  # (model::open_text_file refuses only a head of more than 5% control bytes), so it is
  # imported too: its trace records the unknown and malformed line counts.
  list(APPEND _trace_commands COMMAND baton trace import ${_src} ${_trace_corpus}/${_s}.trace --force)
  list(APPEND _trace_outputs ${_trace_corpus}/${_s}.trace)
endforeach()
add_custom_command(OUTPUT ${_trace_outputs} ${_trace_commands}
  DEPENDS baton ${CMAKE_SOURCE_DIR}/tests/traces/data/tracefs-tdp.txt COMMENT "Making the trace fuzz corpus")
add_custom_target(trace_fuzz_corpus ALL DEPENDS ${_trace_outputs})
# Smoke run: with the checksum repair in trace_fuzz.cpp, 712 of 3,009 inputs reach the header
# decoder (the rest are mutated ftrace text or broken preludes), 51 decode in full, and 1,087 parse as
# ftrace text into events (measured).
baton_add_fuzzer(trace_fuzz SOURCES ${CMAKE_CURRENT_LIST_DIR}/trace_fuzz.cpp LIBS baton_traces PkgConfig::XXHASH
                 CORPUS ${_trace_corpus} CORPUS_TARGET trace_fuzz_corpus MIN_REACHED 500 MIN_DECODED 20
                 MIN_EXTRA 500)
