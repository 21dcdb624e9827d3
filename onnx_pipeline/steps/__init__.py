"""Pipeline steps: one public function each, typed config in, frozen result out."""
