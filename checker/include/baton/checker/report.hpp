// Rendering of checker reports: a table for people, JSON for machines, JUnit XML for CI,
// and the SMT-LIB2 files of refuted or unknown queries.
#pragma once

#include <string>

#include "baton/checker/check.hpp"
#include "baton/model/result.hpp"

namespace baton::checker {

// Renders a report as a readable table followed by each counterexample.
std::string to_text(const Report& r);
// Renders one counterexample for people: the explanation, the field or each tree's walk.
std::string to_text(const Counterexample& c);
// Renders one counterexample as JSON text (the "counterexample" object of to_json).
std::string to_json(const Counterexample& c);
// Renders a report as a JSON document (schema in docs/checker.md).
std::string to_json(const Report& r);
// Renders a report as JUnit XML: one testcase per property; refuted = failure, unknown = error.
std::string to_junit(const Report& r, const std::string& suite = "baton check");
// Writes the SMT-LIB2 query of every refuted or unknown property to DIR/<property>.smt2
// (creating DIR; an existing file is replaced only with `overwrite`); returns the number of
// files written.
Result<unsigned> write_smt2(const Report& r, const std::string& dir, bool overwrite = false);
// Escapes a string for XML text and attributes.
std::string xml_escape(const std::string& s);

}  // namespace baton::checker
